"""Apps through the HTTP API on the shared LocalCluster and S3 server: the built-ins, and the example package found through its entry point.

Every answer is checked against the OpenAPI document, which is built from the apps.
"""

from __future__ import annotations

import shutil
import textwrap
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from flask import Flask
from jsonschema import Draft202012Validator

from conftest import BUCKET
from gateway import services
from helpers import (
    assert_computed_by_the_app,
    assert_made_from_its_seed,
    finished_job,
    installed_package,
    manager_on,
    random_job,
    running_app,
    wait_for,
    wait_for_the_stop,
    workers_held,
)
from openapi_check import CheckedClient
from science_gateway.apps.registry import load_apps
from science_gateway.job_records import DONE, FAILED, JobKey
from science_gateway.job_work import SourceNotFound, plan_work
from science_gateway.jobs import JobNotFound

APPS = ["random-array", "coarsen", "julia-set"]


@pytest.fixture
def api(app: Flask) -> CheckedClient:
    return CheckedClient(app.test_client())


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def finished(api: CheckedClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return finished_job(lambda: api.get(f"/jobs/{job_id}").json, timeout, job_id)


def submitted(api: CheckedClient, app: str, parameters: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    """A job of ``app`` submitted and waited for until it finished; its record."""
    answer = api.post("/jobs", json={"app": app, "parameters": parameters, **({"job_id": job_id} if job_id else {})})
    assert answer.status_code == 202, answer.json
    return finished(api, answer.json["job_id"])


def test_the_apps_are_listed_each_with_the_json_schema_of_its_parameters(api: CheckedClient) -> None:
    listed = api.get("/apps").json["apps"]
    assert [app["name"] for app in listed] == APPS
    for app in listed:
        assert set(app) == {"name", "version", "description", "parameters"} and app["description"]
        Draft202012Validator.check_schema(app["parameters"])
        assert api.get(f"/apps/{app['name']}").json == app
    document = api.get("/openapi.json").json
    assert [branch["$ref"] for branch in document["components"]["schemas"]["JobRequest"]["oneOf"]] == [
        *(f"#/components/schemas/{name}.job" for name in APPS), "#/components/schemas/FirstAppJob",
    ]  # fmt: skip
    assert document["components"]["schemas"]["coarsen.parameters"] == listed[1]["parameters"]


def test_an_unknown_app_is_a_404_listing_the_apps_and_nothing_is_kept(api: CheckedClient) -> None:
    job_id = unique("unknown-app")
    answer = api.post("/jobs", json={"app": "histogram", "job_id": job_id, "parameters": {}})
    assert answer.status_code == 404
    assert answer.json["error"]["code"] == "unknown_app" and answer.json["error"]["apps"] == sorted(APPS)
    assert api.get("/apps/histogram").status_code == 404
    assert api.get(f"/jobs/{job_id}").status_code == 404


def test_random_array_by_name_is_todays_job_bit_for_bit(api: CheckedClient) -> None:
    by_query = api.get(f"/submit_job/{unique('by-query')}?seed=11&shape=300,200&chunks=100,100")
    by_app = submitted(api, "random-array", {"seed": 11, "shape": [300, 200], "chunks": [100, 100]})
    by_old_body = api.post("/jobs", json={"seed": 11, "shape": [300, 200], "chunks": [100, 100]})
    records = [by_query.json, by_app, finished(api, by_old_body.json["job_id"])]
    for record in records:
        assert (record["status"], record["app"], record["app_version"]) == ("done", "random-array", "1.0.0")
        assert record["parameters"] == {"seed": 11, "shape": [300, 200], "chunks": [100, 100], "dtype": "float32", "shards": [300, 200]}
        assert_made_from_its_seed(record["url"], 11)


def block_means(source: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    rows, columns = source.shape[0] // factor[0], source.shape[1] // factor[1]
    return source.astype(np.float64).reshape(rows, factor[0], columns, factor[1]).mean(axis=(1, 3)).astype(source.dtype)


@pytest.mark.parametrize(
    ("source_parameters", "factor", "expected_factor", "layout"),
    [
        # The result's objects mirror the source's: a chunk (a shard) of it is the means of the fewest whole chunks (shards) of the source.
        ({"shape": [1000, 1000], "chunks": [100, 100], "shards": "none"}, 10, (10, 10), ([10, 10], None)),
        ({"shape": [1000, 1200], "chunks": [100, 100], "shards": [500, 600]}, [4, 5], (4, 5), ([25, 20], [125, 120])),
        ({"shape": [600, 400], "chunks": [200, 100], "dtype": "float64"}, [3, 2], (3, 2), ([200, 50], [200, 200])),
    ],
)
def test_coarsen_is_numpys_block_mean_of_the_source_read_back(
    api: CheckedClient, source_parameters: dict, factor: Any, expected_factor: tuple, layout: tuple
) -> None:
    source = submitted(api, "random-array", source_parameters)
    coarse = submitted(api, "coarsen", {"source": source["job_id"], "factor": factor})
    assert coarse["status"] == "done", coarse["error"]
    assert coarse["parameters"] == {"source": source["job_id"], "factor": list(expected_factor)}
    assert (coarse["chunks"], coarse["shards"]) == layout
    read_back = zarr.open_group(source["url"], mode="r")["data"][:]
    expected = block_means(read_back, expected_factor)
    stored = zarr.open_group(coarse["url"], mode="r")["data"]
    assert (stored.shape, stored.dtype, coarse["dtype"]) == (expected.shape, read_back.dtype, source["dtype"])
    np.testing.assert_array_equal(stored[:], expected)
    assert coarse["progress"]["chunks_written"] == coarse["progress"]["chunks_total"]
    assert api.get(f"/jobs/{coarse['job_id']}/preview.png?size=thumbnail").status_code == 200


@pytest.mark.parametrize(
    ("parameters", "status", "code", "message"),
    [
        (
            {"factor": 3}, 400, "invalid_parameters",
            "factor [3, 3] does not divide the shape [1000, 1000] of source '{source}': the result would be [333.33, 333.33]",
        ),
        ({"factor": [7, 10]}, 400, "invalid_parameters", "factor [7, 10] does not divide the shape [1000, 1000] of source '{source}'"),
        ({"factor": 1}, 400, "invalid_parameters", "invalid parameters for app 'coarsen': /factor: 1 is not valid under any of the given schemas"),
        ({"factor": 2, "source": "no-such-job"}, 404, "source_not_found", "source: you have no job 'no-such-job'"),
    ],
)
def test_a_coarsen_refused_names_why_and_keeps_nothing(api: CheckedClient, parameters: dict, status: int, code: str, message: str) -> None:
    source = api.get(f"/submit_job/{unique('to-refuse')}?shape=1000,1000").json
    job_id = unique("refused")
    answer = api.post("/jobs", json={"app": "coarsen", "job_id": job_id, "parameters": {"source": source["job_id"], **parameters}})
    assert answer.status_code == status
    assert answer.json["error"]["code"] == code
    assert answer.json["error"]["message"].startswith(message.format(source=source["job_id"])), answer.json["error"]["message"]
    assert api.get(f"/jobs/{job_id}").status_code == 404


def test_a_source_that_is_not_done_is_a_409_naming_it(app: Flask, api: CheckedClient) -> None:
    cluster = services(app).cluster.client()
    source_id = unique("not-done")
    with workers_held(cluster):
        assert api.get(f"/submit_job/{source_id}?wait=false&shape=100,100").status_code == 202
        answer = api.post("/jobs", json={"app": "coarsen", "parameters": {"source": source_id, "factor": 2}})
    assert answer.status_code == 409
    assert answer.json["error"]["code"] == "source_not_done"
    assert answer.json["error"]["message"].startswith(f"source: job '{source_id}' is ")
    assert finished(api, source_id)["status"] == "done"


def test_deleting_a_source_that_a_running_coarsen_reads_fails_the_coarsen_first_saying_why(app: Flask, api: CheckedClient, results_fs) -> None:
    source = submitted(api, "random-array", {"shape": [1000, 1000], "shards": "none"})
    cluster = services(app).cluster.client()
    coarse_id = unique("reads-a-deleted-source")
    answers: list[Any] = []
    failures: list[BaseException] = []

    def delete_the_source() -> None:
        try:
            answers.append(api.delete(f"/jobs/{source['job_id']}"))
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's own thread to fail on
            failures.append(exc)

    deleting = threading.Thread(target=delete_the_source)
    with workers_held(cluster):
        assert api.post("/jobs", json={"app": "coarsen", "job_id": coarse_id, "parameters": {"source": source["job_id"], "factor": 2}}).status_code == 202
        wait_for(lambda: api.get(f"/jobs/{coarse_id}").json["status"] == "running", 60, "the coarsen to run")
        deleting.start()
        wait_for_the_stop(cluster, coarse_id)
    deleting.join(timeout=120)
    assert failures == [] and [answer.status_code for answer in answers] == [204]
    coarse = api.get(f"/jobs/{coarse_id}").json
    assert coarse["status"] == "failed"
    assert coarse["error"] == {"code": "source_deleted", "message": f"its source {source['job_id']!r} was deleted before the job finished"}
    assert api.get(f"/jobs/{source['job_id']}").status_code == 404
    assert not results_fs.exists(f"{BUCKET}/{source['job_id']}") and not results_fs.exists(f"{BUCKET}/{coarse_id}/data")


def test_a_queued_coarsen_fails_at_once_when_its_source_is_deleted_and_another_users_job_is_no_source(app: Flask) -> None:
    manager = manager_on(app, f"s3://{BUCKET}/{unique('sources')}", max_running_jobs=1)
    manager.start()
    apps = load_apps()
    coarsen = apps.get("coarsen")
    try:
        source = manager.wait(manager.submit("source", random_job(seed=1, shape=(100, 100), chunks=(10, 10)), "alice")[0].key)
        assert source.status == DONE
        with pytest.raises(SourceNotFound, match="you have no job 'source'"):
            plan_work(coarsen, {"source": "source", "factor": 2}, manager.limits, lambda job_id: manager.source("bob", job_id))
        reads = plan_work(coarsen, {"source": "source", "factor": 2}, manager.limits, lambda job_id: manager.source("alice", job_id))
        cluster = services(app).cluster.client()
        with workers_held(cluster):
            # One runner: the first job holds it, and the coarsen waits in the queue.
            first = manager.submit("first", random_job(seed=2, shape=(100, 100), chunks=(10, 10)), "alice")[0].key
            wait_for(lambda: manager.get(first).status == "running", 60, "the first job to run")
            queued = manager.submit("queued-coarsen", reads, "alice")[0].key
            assert manager.get(queued).status == "queued"
            assert manager.cancel_or_delete(JobKey("alice", "source")) is None
            failed = manager.get(queued)
            assert failed.status == FAILED and failed.error == {"code": "source_deleted", "message": "its source 'source' was deleted before the job finished"}
        assert manager.wait(first).status == DONE
    finally:
        manager.close()


def test_the_example_package_is_found_validated_run_previewed_and_deleted(api: CheckedClient, results_fs) -> None:
    refused = api.post("/jobs", json={"app": "julia-set", "parameters": {"size": [0, 100], "max_steps": 5000}})
    assert refused.status_code == 400
    assert refused.json["error"]["details"] == [
        {"pointer": "/max_steps", "reason": "5000 is greater than the maximum of 1000"},
        {"pointer": "/size/0", "reason": "0 is less than the minimum of 1"},
    ]
    julia = submitted(api, "julia-set", {"size": [600, 700], "c": [-0.4, 0.6]}, job_id=unique("julia"))
    assert (julia["status"], julia["app"], julia["app_version"], julia["dtype"]) == ("done", "julia-set", "0.1.0", "uint16")
    assert julia["parameters"] == {"c": [-0.4, 0.6], "size": [600, 700], "max_steps": 100}
    assert_computed_by_the_app(julia)
    picture = api.get(f"/jobs/{julia['job_id']}/preview.png")
    assert picture.status_code == 200 and picture.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert api.delete(f"/jobs/{julia['job_id']}").status_code == 204
    assert not results_fs.exists(f"{BUCKET}/{julia['job_id']}")


FAILING_APPS = textwrap.dedent('''
    import numpy as np

    from science_gateway.apps import App, Output, Plan

    SCHEMA = {"type": "object", "additionalProperties": False}


    class Diverging(App):
        name, version, description, parameters = "diverging", "1.0", "Raises on the workers", SCHEMA

        def plan(self, parameters, context):
            return Plan({}, Output((10, 10), (10, 10), "float32"))

        def compute(self, region, parameters, output, inputs):
            raise FloatingPointError("the model diverged at step 12")


    class Skewed(Diverging):
        name, version, description = "skewed", "2.0", "Another version on the workers"

        def compute(self, region, parameters, output, inputs):
            return np.zeros((10, 10), dtype="float32")
''')


def test_an_app_that_raises_or_that_the_workers_do_not_have_fails_its_job_naming_it(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apps = {"diverging": "failing_apps:Diverging", "skewed": "failing_apps:Skewed"}
    package = installed_package(tmp_path, "failing-apps", {"failing_apps": FAILING_APPS}, apps)
    monkeypatch.syspath_prepend(str(package))
    environ = {"GATEWAY_RESULTS_URL": f"s3://{BUCKET}/{unique('failing-apps')}", "GATEWAY_N_WORKERS": "1", **s3.environ()}
    with running_app(environ, ready_within=120) as gateway:
        api = CheckedClient(gateway.test_client())
        # The gateway has planned with version 2.0; the workers' copy, imported at the first task, says 3.0.1: another image.
        # Another length, and no cached bytecode: the workers read the source anew, whatever its time stamp.
        (package / "failing_apps.py").write_text(FAILING_APPS.replace('"skewed", "2.0"', '"skewed", "3.0.1"'))
        shutil.rmtree(package / "__pycache__", ignore_errors=True)
        diverged = submitted(api, "diverging", {})
        skewed = submitted(api, "skewed", {})
    assert diverged["status"] == "failed"
    assert diverged["error"] == {"code": "job_failed", "message": "app 'diverging' failed: FloatingPointError: the model diverged at step 12"}
    assert skewed["status"] == "failed"
    assert skewed["error"]["message"].startswith("the Dask workers have app 'skewed' version 3.0.1, and the gateway planned with version 2.0")


def test_a_job_of_the_example_package_expires_as_any_job_does(app: Flask, results_fs) -> None:
    prefix = f"{BUCKET}/{unique('julia-expiry')}"
    manager = manager_on(app, f"s3://{prefix}", expiry_interval=0.2)
    manager.start()
    julia = load_apps().get("julia-set")
    try:
        work = plan_work(julia, {"size": [50, 50]}, manager.limits, lambda job_id: None)
        done = manager.wait(manager.submit("julia", work, "alice", ttl=1)[0].key)
        assert done.status == DONE and results_fs.exists(f"{prefix}/.users/alice/julia/data")

        def forgotten() -> bool:
            try:
                manager.get(done.key)
            except JobNotFound:
                return True
            return False

        # The job leaves the gateway's memory last, once its result and record are gone.
        wait_for(forgotten, 30, "the expired job to be deleted")
    finally:
        manager.close()
    assert not results_fs.exists(f"{prefix}/.users/alice/julia") and not results_fs.exists(f"{prefix}/.jobs/.users/alice/julia.json")


def test_a_source_is_kept_past_its_time_while_a_job_reads_it_then_expires(app: Flask, results_fs) -> None:
    prefix = f"{BUCKET}/{unique('source-expiry')}"
    manager = manager_on(app, f"s3://{prefix}", expiry_interval=0.2)
    manager.start()
    coarsen = load_apps().get("coarsen")
    try:
        source = manager.wait(manager.submit("source", random_job(seed=1, shape=(100, 100), chunks=(10, 10)), "alice", ttl=1)[0].key)
        reads = plan_work(coarsen, {"source": "source", "factor": 2}, manager.limits, lambda job_id: manager.source("alice", job_id))
        cluster = services(app).cluster.client()
        with workers_held(cluster):
            reader = manager.submit("reader", reads, "alice")[0].key
            wait_for(lambda: manager.get(reader).status == "running", 60, "the coarsen to run")
            expired_by = datetime.fromisoformat(str(manager.get(source.key).expires_at))
            # Held on paused workers, the reader runs past its source's time and several sweeps, however fast the machine.
            wait_for(lambda: datetime.now(UTC) > expired_by + timedelta(seconds=1), 10, "several sweeps past the source's time")
            assert manager.get(source.key).status == DONE, "kept while a job reads it"
        assert manager.wait(reader).status == DONE
        wait_for(lambda: not results_fs.exists(f"{prefix}/.users/alice/source"), 30, "the source to expire once read")
    finally:
        manager.close()


def test_a_queued_job_whose_app_version_is_not_offered_fails_saying_so(app: Flask) -> None:
    manager = manager_on(app, f"s3://{BUCKET}/{unique('app-versions')}")
    manager.start()
    try:
        planned = random_job(seed=1, shape=(10, 10), chunks=(10, 10))
        # As a record queued by a gateway of another version leaves it.
        older = replace(planned, app_version="0.9.0")
        failed = manager.wait(manager.submit("older", older, "alice")[0].key)
    finally:
        manager.close()
    assert failed.status == FAILED
    assert failed.error == {
        "code": "app_not_offered",
        "message": "app 'random-array' version 0.9.0 is not offered by this gateway (it offers version 1.0.0); submit the job again",
    }
