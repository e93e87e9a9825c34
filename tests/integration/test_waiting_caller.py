"""A caller who waits on /submit_job learns how the job ended, whatever the failure.

The job is held by pausing the Dask workers, so that the failure is made while
it runs, however fast the machine: a paused worker starts no task.
"""

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
import requests
from distributed import Client
from flask import Flask
from werkzeug.serving import make_server

from conftest import BUCKET
from devtools.local_s3 import LocalS3
from gateway import services
from helpers import running_app, wait_for, wait_for_the_stop, wait_for_the_tasks, workers_held
from openapi_check import CheckedClient


def own_prefix() -> str:
    """A test's own place in the bucket: a gateway starting reads every record under its prefix."""
    return f"{BUCKET}/waiting-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def results_prefix() -> str:
    return own_prefix()


@pytest.fixture
def one_worker_app(s3: LocalS3, results_prefix: str) -> Iterator[Flask]:
    environ = {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{results_prefix}", "GATEWAY_N_WORKERS": "1", "GATEWAY_JOB_TIMEOUT": "2"}
    with running_app(environ, ready_within=60) as app:
        yield app


def status_of(app: Flask, job_id: str) -> str | None:
    response = app.test_client().get(f"/jobs/{job_id}")
    return response.json["status"] if response.status_code == 200 else None


@contextmanager
def held_waiting_call(app: Flask, job_id: str) -> Iterator[tuple[Client, Future]]:
    """A caller waiting on /submit_job for a job held running: the block makes it fail, then the workers go on.

    The block begins once the job's tasks are on the scheduler, not as soon as it is ``running``: a
    fault made in between (a restart, the bucket gone) would come before the job's tasks exist.
    Yields the cluster's client and the caller's future answer, which comes once the block has ended.
    """
    client = services(app).cluster.client()
    with ThreadPoolExecutor(1) as pool:
        with workers_held(client):
            answer = pool.submit(CheckedClient(app.test_client()).get, f"/submit_job/{job_id}")
            wait_for_the_tasks(client, job_id)
            assert status_of(app, job_id) == "running"
            yield client, answer


def test_a_waiting_caller_whose_job_runs_over_the_timeout_gets_504(one_worker_app: Flask, results_prefix: str, results_fs) -> None:
    with held_waiting_call(one_worker_app, "overrun") as (client, answer):
        wait_for_the_stop(client, "overrun")  # sent once the job's own timeout has fired
    response = answer.result(timeout=120)
    assert response.status_code == 504, response.json
    assert response.json["error"]["code"] == "job_timeout"
    assert "GATEWAY_JOB_TIMEOUT" in response.json["error"]["message"]
    assert response.json["error"]["job"]["status"] == "failed"
    assert not results_fs.exists(f"{results_prefix}/overrun"), "the partial array is removed"


def test_a_waiting_caller_whose_job_loses_its_tasks_gets_500(one_worker_app: Flask, results_prefix: str, results_fs) -> None:
    with held_waiting_call(one_worker_app, "restarted") as (client, answer):
        client.restart()
    response = answer.result(timeout=120)
    assert response.status_code == 500, response.json
    assert response.json["error"]["code"] == "job_failed"
    assert "lost its Dask tasks" in response.json["error"]["message"]
    assert not results_fs.exists(f"{results_prefix}/restarted/zarr.json"), "no completion marker"


def test_a_waiting_caller_whose_job_is_cancelled_gets_409(one_worker_app: Flask, results_prefix: str, results_fs) -> None:
    # The DELETE of a running job answers once it has ended, after the workers go on.
    with ThreadPoolExecutor(1) as pool, held_waiting_call(one_worker_app, "called-off") as (client, answer):
        cancelled = pool.submit(CheckedClient(one_worker_app.test_client()).delete, "/jobs/called-off")
        wait_for_the_stop(client, "called-off")
    response = answer.result(timeout=120)
    assert cancelled.result(timeout=120).json["status"] == "cancelled"
    assert response.status_code == 409, response.json
    assert response.json["error"]["code"] == "job_cancelled"
    assert response.json["error"]["job"]["status"] == "cancelled"
    assert not results_fs.exists(f"{results_prefix}/called-off"), "its partial array is removed"


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


@contextmanager
def served(**settings: str) -> Iterator[tuple[Flask, str]]:
    """A one-worker gateway with these settings, served over real connections by Werkzeug's threaded server; its URL."""
    environ = {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{own_prefix()}", "GATEWAY_N_WORKERS": "1", **settings}
    with running_app(environ, ready_within=60) as app:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield app, f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(30)


@pytest.fixture
def room_of_one(s3: LocalS3) -> Iterator[tuple[Flask, str]]:
    """A waiting room of one place."""
    with served(GATEWAY_MAX_WAITING_CALLERS="1") as app_and_url:
        yield app_and_url


def open_waiting_call(url: str, job_id: str) -> socket.socket:
    """A waiting /submit_job on a connection the test can close, as an interrupted notebook cell does."""
    address = urlsplit(url)
    connection = socket.create_connection((address.hostname, address.port), timeout=30)
    connection.sendall(f"GET /submit_job/{job_id}?shape=100,100 HTTP/1.1\r\nHost: {address.netloc}\r\n\r\n".encode())
    return connection


def test_a_caller_who_hangs_up_frees_its_place_at_once_and_reads_never_take_one(room_of_one: tuple[Flask, str], results_fs) -> None:
    app, url = room_of_one
    room = services(app).waiting
    run = uuid.uuid4().hex[:8]
    done = requests.get(f"{url}/submit_job/read-while-full-{run}?shape=100,100", timeout=120).json()
    assert done["status"] == "done"
    connections: list[socket.socket] = []
    try:
        with workers_held(services(app).cluster.client()):
            connections.append(open_waiting_call(url, f"hangs-up-{run}"))
            wait_for(lambda: room.taken == 1, 60, "the caller to take the one place")
            full = requests.get(f"{url}/submit_job/turned-away-{run}?shape=100,100", timeout=60)
            assert (full.status_code, full.json()["error"]["code"]) == (429, "too_many_waiting_callers")
            again = requests.get(f"{url}/submit_job/read-while-full-{run}?shape=100,100", timeout=60)
            assert (again.status_code, again.json()) == (200, done), "a done job's repeat waits for nothing, and gets it at once"
            with ThreadPoolExecutor(16) as pool:
                reads = list(pool.map(lambda _: requests.get(f"{done['http_url']}/zarr.json", timeout=60).status_code, range(32)))
            assert reads == [200] * 32, "reads are no waiting callers"

            connections.pop().close()
            # Noticed as soon as the closed connection is readable; the bound only turns a failure into a report.
            # Before, the place stayed taken until the job ended, which the paused workers never let happen here.
            wait_for(lambda: room.taken == 0, 10, "the place of the caller who hung up to come free")
            connections.append(open_waiting_call(url, f"takes-the-place-{run}"))
            wait_for(lambda: room.taken == 1, 60, "a new caller to take the place")
    finally:
        for connection in connections:
            connection.close()
    client = app.test_client()
    both = (f"hangs-up-{run}", f"takes-the-place-{run}")
    wait_for(lambda: all(client.get(f"/jobs/{job_id}").json["status"] == "done" for job_id in both), 60, "both jobs")
    assert client.get(f"/jobs/turned-away-{run}").status_code == 404, "a refused caller's job was never made"


def stalled_read(url: str) -> socket.socket:
    """A GET of a large object whose reader reads nothing: the server's sends stall once the socket's buffers are full."""
    address = urlsplit(url)
    connection = socket.create_connection((address.hostname, address.port), timeout=30)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.sendall(f"GET {address.path} HTTP/1.1\r\nHost: {address.netloc}\r\n\r\n".encode())
    return connection


def test_reads_beyond_the_gateways_wait_their_turn_or_get_429_and_a_reader_who_hangs_up_frees_its_place(s3: LocalS3) -> None:
    with served(GATEWAY_MAX_READS="1") as (app, url):
        places = services(app).reads.places
        # One object of 64 MB: far more than the sockets' buffers hold.
        job = requests.get(f"{url}/submit_job/one-shard-{uuid.uuid4().hex[:8]}?shape=4000,4000&chunks=1000,1000&shards=4000,4000", timeout=300).json()
        assert job["status"] == "done", job
        stalled = stalled_read(f"{job['http_url']}/data/c.0.0")
        try:
            wait_for(lambda: places.taken == 1, 30, "the stalled read to hold the one place")
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(requests.get, f"{job['http_url']}/zarr.json", timeout=60)
                wait_for(lambda: places.waiting == 1, 30, "a second read to wait for the place")
                refused = requests.get(f"{job['http_url']}/zarr.json", timeout=60)
                assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_reads")
                assert refused.headers["Retry-After"] == "1" and refused.json()["error"]["setting"] == "GATEWAY_MAX_READS"
                stalled.close()
                # Werkzeug's server notices the hang-up at its next send; the waiting read then gets the place within its patience.
                assert waiting.result(timeout=60).status_code == 200
        finally:
            stalled.close()
        wait_for(lambda: places.taken == 0, 30, "every place to come free")
