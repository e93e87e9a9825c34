"""Following a job live: GET /jobs/<id>/events as Server-Sent Events, from the gateway under gunicorn.

Jobs are held on paused workers, so that what a follower receives before the
job can end is known, however fast the machine.
"""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from jsonschema import Draft202012Validator

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3
from helpers import gateways_cluster, server_sent_events, wait_for, wait_for_the_stop, wait_for_the_tasks, workers_held
from science_gateway.openapi import openapi_document

PREFIX = f"{BUCKET}/following-jobs"
STREAMS = 3


@pytest.fixture(scope="module")
def served(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from serve_for_module(tmp_path_factory, "following-jobs", f"s3://{PREFIX}", GATEWAY_MAX_STREAMS=str(STREAMS))


def jobs(events: list[dict[str, str]]) -> list[dict]:
    assert all(event["event"] == "job" for event in events), events
    return [json.loads(event["data"]) for event in events]


def progress(events: list[dict[str, str]]) -> list[tuple[str, int]]:
    return [(job["status"], job["progress"]["chunks_written"]) for job in jobs(events)]


def test_a_followed_job_sends_its_changes_while_it_runs_and_a_stream_cut_mid_job_resumes_without_a_gap_or_a_repeat(
    served: RunningGateway, http
) -> None:
    url = f"{served.url}/jobs/followed/events"
    with gateways_cluster(served.log_file.parent) as cluster:
        with workers_held(cluster):
            # 36 MB in one object per chunk: five tasks of about 8 MiB, where the default job is one task.
            body = {"job_id": "followed", "shape": [3000, 3000], "shards": None}
            assert http.post(f"{served.url}/jobs", json=body, timeout=30).status_code == 202
            wait_for_the_tasks(cluster, "followed")
            whole = http.get(url, stream=True, timeout=60)
            cut = http.get(url, stream=True, timeout=60)
            cut_events = server_sent_events(cut)
            assert next(cut_events) == {"retry": "2000"}
            # Received while the job's workers are held: it cannot have ended yet.
            before_the_cut = [next(cut_events), next(cut_events)]
            cut.close()
            resumed = http.get(url, headers={"Last-Event-ID": before_the_cut[-1]["id"]}, stream=True, timeout=60)
        after_the_cut = [event for event in server_sent_events(resumed) if "id" in event]
        uncut = [event for event in server_sent_events(whole) if "id" in event]

    assert whole.status_code == 200 and whole.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert whole.headers["Cache-Control"] == "no-cache" and whole.headers["X-Accel-Buffering"] == "no"
    assert progress(before_the_cut) == [("queued", 0), ("running", 0)]
    assert [event["id"] for event in before_the_cut + after_the_cut] == [event["id"] for event in uncut]
    ids = [int(event["id"]) for event in uncut]
    assert ids == sorted(set(ids)), "increasing, none twice"
    # Five tasks, each an event as its chunks land, then the end.
    written = [chunks for status, chunks in progress(uncut) if status == "running"]
    assert len(written) >= 4 and written == sorted(set(written)) and written[-1] == 900, progress(uncut)
    assert progress(uncut)[-1] == ("done", 900)
    assert jobs(uncut)[-1] == http.get(f"{served.url}/jobs/followed", timeout=30).json()
    # Each event as the API document describes it, to a client's parser.
    described = openapi_document()["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert [error.message for event in uncut for error in Draft202012Validator(described).iter_errors(event)] == []

    # Connecting again after the end: nothing more to send, which an EventSource takes as the end.
    again = http.get(url, headers={"Last-Event-ID": uncut[-1]["id"]}, timeout=30)
    assert again.status_code == 204 and again.content == b""
    # Without Last-Event-ID: every event kept of the job, the end last.
    assert [event["id"] for event in server_sent_events(http.get(url, stream=True, timeout=30)) if "id" in event] == [event["id"] for event in uncut]


def open_streams(gateway: RunningGateway, http) -> int:
    """The gateway_event_streams gauge: callers following a job now."""
    (line,) = [line for line in http.get(f"{gateway.url}/metrics", timeout=30).text.splitlines() if line.startswith("gateway_event_streams ")]
    return int(float(line.split()[1]))


def test_streams_beyond_the_limit_are_refused_with_429_and_a_caller_who_hangs_up_frees_its_place(served: RunningGateway, http) -> None:
    url = f"{served.url}/jobs/held-for-streams/events"
    streams = []
    with ThreadPoolExecutor(STREAMS + 1) as pool, gateways_cluster(served.log_file.parent) as cluster:
        try:
            with workers_held(cluster):
                assert http.post(f"{served.url}/jobs", json={"job_id": "held-for-streams"}, timeout=30).status_code == 202
                streams.extend(http.get(url, stream=True, timeout=60) for _ in range(STREAMS))
                refused = http.get(url, timeout=30)
                followers = open_streams(served, http)
                streams.pop().close()
                admitted = wait_for(lambda: (answer := http.get(url, stream=True, timeout=60)).status_code == 200 and answer, 10, "the place to be free")
                streams.append(admitted)
                # Each follower learns that the job was cancelled, and its stream ends.
                readers = [pool.submit(lambda stream: [event for event in server_sent_events(stream) if "id" in event], stream) for stream in streams]
                cancelled = pool.submit(http.delete, f"{served.url}/jobs/held-for-streams", timeout=120)
                wait_for_the_stop(cluster, "held-for-streams")
            assert cancelled.result(timeout=120).json()["status"] == "cancelled"
            ends = [progress(reader.result(timeout=60))[-1] for reader in readers]
        finally:
            for stream in streams:
                stream.close()

    assert [stream.status_code for stream in streams] == [200] * STREAMS and followers == STREAMS
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "10"
    assert refused.json()["error"]["code"] == "too_many_streams" and refused.json()["error"]["setting"] == "GATEWAY_MAX_STREAMS"
    assert ends == [("cancelled", 0)] * STREAMS
    # Every place given back: the ended streams', the refused one's and the one its caller left.
    wait_for(lambda: open_streams(served, http) == 0, 10, "the gateway to close the ended streams")


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/jobs/no-such-job/events", {}, 404, "job_not_found"),
        ("/jobs/any-job/events", {"Last-Event-ID": "yesterday"}, 400, "invalid_parameters"),
        ("/jobs/any-job/events", {"Last-Event-ID": str(10**16)}, 400, "invalid_parameters"),
        ("/jobs/any-job/events?since=0", {}, 400, "invalid_parameters"),
        ("/jobs/bad%20id/events", {}, 400, "invalid_job_id"),
    ],
)
def test_what_cannot_be_followed_is_a_json_error(served: RunningGateway, http, path: str, headers: dict[str, str], status: int, code: str) -> None:
    answer = http.get(f"{served.url}{path}", headers=headers, timeout=30)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
