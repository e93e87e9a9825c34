"""A caller who waits on /submit_job learns how the job ended, whatever the failure.

The job is held by pausing the Dask workers, so that the failure is made while
it runs, however fast the machine: a paused worker starts no task.
"""

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from distributed import Client
from flask import Flask

from conftest import BUCKET
from devtools.local_s3 import LocalS3
from gateway import services
from helpers import running_app, wait_for, wait_for_the_stop, workers_held
from openapi_check import CheckedClient

PREFIX = f"{BUCKET}/waiting"


@pytest.fixture
def one_worker_app(s3: LocalS3) -> Iterator[Flask]:
    environ = {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{PREFIX}", "GATEWAY_N_WORKERS": "1", "GATEWAY_JOB_TIMEOUT": "2"}
    with running_app(environ, ready_within=60) as app:
        yield app


def status_of(app: Flask, job_id: str) -> str | None:
    response = app.test_client().get(f"/jobs/{job_id}")
    return response.json["status"] if response.status_code == 200 else None


@contextmanager
def held_waiting_call(app: Flask, job_id: str) -> Iterator[tuple[Client, Future]]:
    """A caller waiting on /submit_job for a job held running: the block makes it fail, then the workers go on.

    Yields the cluster's client and the caller's future answer, which comes once the block has ended.
    """
    client = services(app).cluster.client()
    with ThreadPoolExecutor(1) as pool:
        with workers_held(client):
            answer = pool.submit(CheckedClient(app.test_client()).get, f"/submit_job/{job_id}")
            wait_for(lambda: status_of(app, job_id) == "running", 60, "the job to run")
            yield client, answer


def test_a_waiting_caller_whose_job_runs_over_the_timeout_gets_504(one_worker_app: Flask, results_fs) -> None:
    with held_waiting_call(one_worker_app, "overrun") as (client, answer):
        wait_for_the_stop(client, "overrun")  # sent once the job's own timeout has fired
    response = answer.result(timeout=120)
    assert response.status_code == 504, response.json
    assert response.json["error"]["code"] == "job_timeout"
    assert "GATEWAY_JOB_TIMEOUT" in response.json["error"]["message"]
    assert response.json["error"]["job"]["status"] == "failed"
    assert not results_fs.exists(f"{PREFIX}/overrun"), "the partial array is removed"


def test_a_waiting_caller_whose_job_loses_its_tasks_gets_500(one_worker_app: Flask, results_fs) -> None:
    with held_waiting_call(one_worker_app, "restarted") as (client, answer):
        client.restart()
    response = answer.result(timeout=120)
    assert response.status_code == 500, response.json
    assert response.json["error"]["code"] == "job_failed"
    assert "lost its Dask tasks" in response.json["error"]["message"]
    assert not results_fs.exists(f"{PREFIX}/restarted/zarr.json"), "no completion marker"


def test_a_waiting_caller_whose_job_is_cancelled_gets_409(one_worker_app: Flask, results_fs) -> None:
    # The DELETE of a running job answers once it has ended, after the workers go on.
    with ThreadPoolExecutor(1) as pool, held_waiting_call(one_worker_app, "called-off") as (client, answer):
        cancelled = pool.submit(CheckedClient(one_worker_app.test_client()).delete, "/jobs/called-off")
        wait_for_the_stop(client, "called-off")
    response = answer.result(timeout=120)
    assert cancelled.result(timeout=120).json["status"] == "cancelled"
    assert response.status_code == 409, response.json
    assert response.json["error"]["code"] == "job_cancelled"
    assert response.json["error"]["job"]["status"] == "cancelled"
    assert not results_fs.exists(f"{PREFIX}/called-off"), "its partial array is removed"


def test_a_waiting_caller_whose_bucket_goes_away_gets_502(s3: LocalS3, results_fs) -> None:
    results_fs.mkdir("doomed-bucket")
    with running_app({**os.environ, "GATEWAY_RESULTS_URL": "s3://doomed-bucket", "GATEWAY_N_WORKERS": "1"}, ready_within=60) as app:
        with held_waiting_call(app, "doomed") as (_, answer):
            results_fs.rm("doomed-bucket", recursive=True)  # its objects, then the bucket
            assert not results_fs.exists("doomed-bucket")
        response = answer.result(timeout=120)
    assert response.status_code == 502, response.json
    assert response.json["error"]["code"] == "storage_error"
    assert "doomed" in response.json["error"]["message"] and response.json["error"]["job"]["status"] == "failed"
    assert s3.secret_key not in response.get_data(as_text=True)
