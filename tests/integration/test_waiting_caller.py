"""A caller who waits on /submit_job learns how the job ended, whatever the failure.

The job is held by pausing the Dask workers, so that the failure is made while
it runs, however fast the machine: a paused worker starts no task.
"""

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from flask import Flask

from conftest import BUCKET
from devtools.local_s3 import LocalS3
from gateway import services
from helpers import running_app, stop_reached, wait_for, workers_held
from openapi_check import CheckedClient

PREFIX = f"{BUCKET}/waiting"


@pytest.fixture
def one_worker_app(s3: LocalS3) -> Iterator[Flask]:
    environ = {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{PREFIX}", "GATEWAY_N_WORKERS": "1", "GATEWAY_JOB_TIMEOUT": "2"}
    with running_app(environ, ready_within=60) as app:
        yield app


def waiting_call(pool: ThreadPoolExecutor, app: Flask, job_id: str) -> Future:
    return pool.submit(CheckedClient(app.test_client()).get, f"/submit_job/{job_id}")


def status_of(app: Flask, job_id: str) -> str | None:
    response = app.test_client().get(f"/jobs/{job_id}")
    return response.json["status"] if response.status_code == 200 else None


def test_a_waiting_caller_whose_job_runs_over_the_timeout_gets_504(one_worker_app: Flask, results_fs) -> None:
    client = services(one_worker_app).cluster.client()
    with ThreadPoolExecutor(1) as pool:
        with workers_held(client):
            answer = waiting_call(pool, one_worker_app, "overrun")
            # The job's own timeout has fired once its stop reaches the workers; it cannot finish before.
            wait_for(lambda: all(client.run(stop_reached, "overrun").values()), 60, "the job's timeout to stop its tasks")
        response = answer.result(timeout=120)
    assert response.status_code == 504, response.json
    assert response.json["error"]["code"] == "job_timeout"
    assert "GATEWAY_JOB_TIMEOUT" in response.json["error"]["message"]
    assert response.json["error"]["job"]["status"] == "failed"
    assert not results_fs.exists(f"{PREFIX}/overrun"), "the partial array is removed"


def test_a_waiting_caller_whose_job_loses_its_tasks_gets_500(one_worker_app: Flask, results_fs) -> None:
    client = services(one_worker_app).cluster.client()
    with ThreadPoolExecutor(1) as pool:
        with workers_held(client):
            answer = waiting_call(pool, one_worker_app, "restarted")
            wait_for(lambda: status_of(one_worker_app, "restarted") == "running", 60, "the job to run")
            client.restart()
        response = answer.result(timeout=120)
    assert response.status_code == 500, response.json
    assert response.json["error"]["code"] == "job_failed"
    assert "lost its Dask tasks" in response.json["error"]["message"]
    assert not results_fs.exists(f"{PREFIX}/restarted/zarr.json"), "no completion marker"


def test_a_waiting_caller_whose_job_is_cancelled_gets_409(one_worker_app: Flask, results_fs) -> None:
    client = services(one_worker_app).cluster.client()
    with ThreadPoolExecutor(2) as pool:
        with workers_held(client):
            answer = waiting_call(pool, one_worker_app, "called-off")
            wait_for(lambda: status_of(one_worker_app, "called-off") == "running", 60, "the job to run")
            cancelled = pool.submit(CheckedClient(one_worker_app.test_client()).delete, "/jobs/called-off")
            wait_for(lambda: all(client.run(stop_reached, "called-off").values()), 60, "the cancel to reach the workers")
        response = answer.result(timeout=120)
    assert cancelled.result(timeout=120).json["status"] == "cancelled"
    assert response.status_code == 409, response.json
    assert response.json["error"]["code"] == "job_cancelled"
    assert response.json["error"]["job"]["status"] == "cancelled"
    assert not results_fs.exists(f"{PREFIX}/called-off"), "its partial array is removed"


def test_a_waiting_caller_whose_bucket_goes_away_gets_502(s3: LocalS3, results_fs) -> None:
    results_fs.mkdir("doomed-bucket")
    with running_app({**os.environ, "GATEWAY_RESULTS_URL": "s3://doomed-bucket", "GATEWAY_N_WORKERS": "1"}, ready_within=60) as app:
        client = services(app).cluster.client()
        with ThreadPoolExecutor(1) as pool:
            with workers_held(client):
                answer = waiting_call(pool, app, "doomed")
                wait_for(lambda: status_of(app, "doomed") == "running", 60, "the job to run")
                results_fs.rm("doomed-bucket", recursive=True)  # its objects, then the bucket
                assert not results_fs.exists("doomed-bucket")
            response = answer.result(timeout=120)
    assert response.status_code == 502, response.json
    assert response.json["error"]["code"] == "storage_error"
    assert "doomed" in response.json["error"]["message"] and response.json["error"]["job"]["status"] == "failed"
    assert s3.secret_key not in response.get_data(as_text=True)
