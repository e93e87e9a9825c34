"""/metrics in Prometheus text format, and the job event log lines, with real jobs under gunicorn."""

import json
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3
from science_gateway.metrics import JOB_PHASES


@pytest.fixture(scope="module")
def observed(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from serve_for_module(tmp_path_factory, "metrics", f"s3://{BUCKET}/metrics", GATEWAY_LOG_FORMAT="json")


def samples(gateway: RunningGateway, http) -> dict[tuple[str, tuple], float]:
    response = http.get(f"{gateway.url}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_counters_move_with_real_jobs(observed: RunningGateway, http) -> None:
    before = samples(observed, http)
    assert before[("gateway_cluster_workers", ())] == 3

    assert http.get(f"{observed.url}/submit_job/counted?shape=100,100", timeout=60).status_code == 200
    assert http.get(f"{observed.url}/submit_job/counted", timeout=60).status_code == 409
    assert http.get(f"{observed.url}/submit_job/too-slow?shape=100,100", timeout=60).status_code == 200
    after = samples(observed, http)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("gateway_jobs_submitted_total", app="random-array") == 2
    assert moved("gateway_jobs_finished_total", outcome="done", app="random-array") == 2
    assert moved("gateway_job_duration_seconds_count", outcome="done", app="random-array") == 2
    assert moved("gateway_job_duration_seconds_sum", outcome="done", app="random-array") > 0
    assert after[("gateway_jobs_running", ())] == 0 and after[("gateway_jobs_queued", ())] == 0
    assert ("gateway_s3_errors_total", ()) in after
    # Each phase once per job: the refused repeat is no job.
    assert {phase: moved("gateway_job_phase_seconds_count", phase=phase) for phase in JOB_PHASES} == dict.fromkeys(JOB_PHASES, 2)
    phase_seconds = {phase: moved("gateway_job_phase_seconds_sum", phase=phase) for phase in JOB_PHASES}
    assert all(seconds >= 0 for seconds in phase_seconds.values()) and phase_seconds["puts"] > 0, phase_seconds
    # The phases until the tasks end lie within the job's running time (from the runner taking it until it is marked complete).
    running = sum(phase_seconds[phase] for phase in ("start", "scheduling", "generation", "puts"))
    assert running <= moved("gateway_job_duration_seconds_sum", outcome="done", app="random-array")


def test_each_job_event_is_one_json_log_line(observed: RunningGateway, http) -> None:
    assert http.get(f"{observed.url}/submit_job/logged?shape=100,100", timeout=60).status_code == 200
    lines = [json.loads(line) for line in observed.log().splitlines() if line.startswith("{")]
    events = [(line["event"], line["status"]) for line in lines if line.get("job_id") == "logged"]
    assert events == [("submitted", "queued"), ("started", "running"), ("done", "done")]
    done = next(line for line in lines if line.get("job_id") == "logged" and line["event"] == "done")
    assert done["seconds"] > 0 and done["level"] == "INFO" and "job logged done in" in done["message"]
