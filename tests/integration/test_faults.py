"""Faults on real processes: the S3 server stops, a Dask worker dies, a job overruns, the gateway gets SIGTERM.

Whatever happens, a job is never ``done`` with chunks missing, a half-written
array never carries the completion marker, and the service stays up.
"""

import os
import secrets
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import psutil
import pytest
import requests
import zarr
from flask import Flask

from conftest import BUCKET
from devtools.gunicorn_gateway import RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import LocalS3, start_local_s3
from devtools.processes import free_port, stop_process
from gateway import services
from helpers import assert_all_gone, chunk_objects, descendants, expected_objects, new_secret, random_job, wait_for, wait_for_the_stop, workers_held
from science_gateway.apps.random_array import random_chunk
from science_gateway.jobs import JobManager
from science_gateway.region_writes import chunk_selections
from science_gateway.results_store import ResultsStore

# 400 MB in about 50 tasks: a few seconds, long enough to be cut short on the way.
BIG_JOB = {"shape": [10000, 10000], "chunks": [1000, 1000]}
SMALL_JOB = {"shape": [100, 100], "chunks": [10, 10]}


def record(gateway: RunningGateway, job_id: str, http: requests.Session) -> dict:
    return http.get(f"{gateway.url}/jobs/{job_id}", timeout=30).json()


def wait_until_writing(gateway: RunningGateway, job_id: str, http: requests.Session) -> None:
    wait_for(lambda: record(gateway, job_id, http)["progress"]["chunks_written"] > 0, 60, f"{job_id} to write")


def wait_until_finished(gateway: RunningGateway, job_id: str, http: requests.Session, timeout: float = 180) -> dict:
    return wait_for(
        lambda: (job := record(gateway, job_id, http))["status"] in ("done", "failed", "cancelled") and job,
        timeout,
        f"{job_id} to finish",
    )


def assert_values_match_the_seed(array: zarr.Array, seed: int, samples: int = 10) -> None:
    """Chunks picked at random hold exactly what their seed makes."""
    selections = chunk_selections(array.shape, array.chunks)
    for index in np.random.default_rng(0).choice(len(selections), size=min(samples, len(selections)), replace=False):
        selection = selections[index]
        np.testing.assert_array_equal(array[selection], random_chunk(seed, int(index), selection, str(array.dtype)))


def accepts_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


# -- the S3 server stops in the middle of a job ---------------------------------


def test_s3_stopping_mid_job_fails_it_naming_storage_and_the_id_can_run_again(tmp_path: Path, http: requests.Session) -> None:
    credentials = {"access_key": f"fault-access-{secrets.token_hex(4)}", "secret_key": new_secret()}
    port = free_port()
    data = tmp_path / "s3"
    s3 = start_local_s3(data, ("results",), **credentials, port=port, log_file=tmp_path / "s3.log")
    environ = {**os.environ, **s3.environ(), "GATEWAY_RESULTS_URL": "s3://results"}
    gateway = start_gunicorn_gateway(environ, log_file=tmp_path / "gateway.log")
    try:
        assert http.post(f"{gateway.url}/jobs", json={"job_id": "outage", **BIG_JOB}, timeout=30).status_code == 202
        wait_until_writing(gateway, "outage", http)

        s3.stop()

        failed = wait_until_finished(gateway, "outage", http)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "storage_error"
        assert failed["error"]["message"].startswith("results store error: writing chunks of job 'outage' failed")
        assert credentials["secret_key"] not in str(failed)
        assert not list(data.glob("results/outage/zarr.json")), "no completion marker"
        assert http.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
        not_ready = http.get(f"{gateway.url}/readyz", timeout=30)
        assert not_ready.status_code == 503 and not not_ready.json()["error"]["results_store"]["ready"]
        assert not_ready.elapsed.total_seconds() < 10, "a readiness probe answers within its timeout"

        s3 = start_local_s3(data, ("results",), **credentials, port=port, log_file=tmp_path / "s3.log")
        gateway.wait_until_ready(60)
        again = http.get(f"{gateway.url}/submit_job/outage?shape=1000,1000&seed=3", timeout=120)
        assert again.status_code == 200, again.text
        with pytest.MonkeyPatch.context() as patch:
            for name, value in s3.environ().items():
                patch.setenv(name, value)
            array = zarr.open_group("s3://results/outage", mode="r", storage_options={"skip_instance_cache": True})["data"]
            assert_values_match_the_seed(array, seed=3)
            assert len(chunk_objects(fsspec.filesystem("s3", skip_instance_cache=True), "results/outage/data")) == expected_objects(again.json())
    finally:
        stop_process(gateway.process, timeout=60)
        s3.stop()
    assert "storage" in gateway.log() and credentials["secret_key"] not in gateway.log()


# -- a Dask worker dies during a job ----------------------------------------------


def test_a_worker_killed_mid_job_never_leaves_a_done_job_with_missing_chunks(app: Flask, results_fs) -> None:
    client = app.test_client()
    cluster = services(app).cluster.client()
    worker_pids = cluster.run(os.getpid)
    assert client.post("/jobs", json={"job_id": "worker-dies", "seed": 11, **BIG_JOB}).status_code == 202
    wait_for(lambda: (job := client.get("/jobs/worker-dies").json)["progress"]["chunks_written"] > 0 and job["status"] == "running", 60, "the job to write")

    psutil.Process(next(iter(worker_pids.values()))).kill()

    job = wait_for(lambda: (body := client.get("/jobs/worker-dies").json)["status"] in ("done", "failed") and body, 180, "the job to end")
    path = f"{BUCKET}/worker-dies"
    if job["status"] == "done":
        assert len(chunk_objects(results_fs, f"{path}/data")) == expected_objects(job)
        assert_values_match_the_seed(zarr.open_group(f"s3://{path}", mode="r")["data"], seed=11)
    else:
        assert "worker" in job["error"]["message"]
        assert not results_fs.exists(f"{path}/zarr.json")
    # The nanny brings the worker back: the cluster keeps its size for the next job.
    wait_for(lambda: len(cluster.scheduler_info(n_workers=-1)["workers"]) == 3, 60, "the worker to be restarted")
    assert client.get("/submit_job/after-the-worker-died?shape=100,100").json["status"] == "done"


# -- a job over its timeout --------------------------------------------------------


def test_a_job_over_its_timeout_fails_and_its_dask_work_is_cancelled(app: Flask, results_fs) -> None:
    settings = replace(services(app).settings, results_url=f"s3://{BUCKET}/timeout", job_timeout=1.0)
    manager = JobManager(services(app).cluster, ResultsStore(settings.results_url), settings, services(app).metrics, services(app).apps)
    manager.start()
    cluster = services(app).cluster.client()
    try:
        # Held, the job cannot finish within its timeout however fast the machine.
        with workers_held(cluster):
            submitted, _ = manager.submit("overrun", random_job(seed=1))
            wait_for_the_stop(cluster, "overrun")
        job = manager.wait(submitted.key)
    finally:
        manager.close()
    assert job.status == "failed"
    assert job.error["code"] == "job_timeout" and "GATEWAY_JOB_TIMEOUT" in job.error["message"]
    wait_for(lambda: not cluster.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks)), 30, "no task left on the scheduler")
    assert not any(cluster.processing().values()), "no worker still running a task of the job"
    assert not results_fs.exists(f"{BUCKET}/timeout/overrun")


# -- SIGTERM to gunicorn while a job runs -------------------------------------------


def sigterm_while_running(environ: dict, tmp_path: Path, http: requests.Session) -> tuple[RunningGateway, requests.Response]:
    """Start a long job with a caller waiting for it, queue a short one, send SIGTERM.

    Return once the gateway has exited, with the waiting caller's answer.
    """
    gateway = start_gunicorn_gateway(environ, log_file=tmp_path / "first.log")
    dask_processes = descendants(gateway.process.pid)
    with ThreadPoolExecutor(1) as caller:
        shape, chunks = (",".join(map(str, BIG_JOB[name])) for name in ("shape", "chunks"))
        waiting = caller.submit(http.get, f"{gateway.url}/submit_job/long?seed=5&shape={shape}&chunks={chunks}", timeout=300)
        wait_for(lambda: http.get(f"{gateway.url}/jobs/long", timeout=30).status_code == 200, 30, "the long job")
        http.post(f"{gateway.url}/jobs", json={"job_id": "queued", **SMALL_JOB}, timeout=30).raise_for_status()
        wait_until_writing(gateway, "long", http)
        assert record(gateway, "queued", http)["status"] == "queued"

        gateway.process.send_signal(signal.SIGTERM)

        wait_for(lambda: not accepts_connections(gateway.url), 10, "gunicorn to stop taking connections")
        assert gateway.process.wait(timeout=120) == 0, gateway.log()
        assert_all_gone(dask_processes, timeout=30)
        return gateway, waiting.result(timeout=10)


@pytest.fixture
def restart_environ(s3: LocalS3, request: pytest.FixtureRequest) -> dict[str, str]:
    return {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{BUCKET}/sigterm-{request.node.name[-12:]}", "GATEWAY_MAX_RUNNING_JOBS": "1"}


def test_sigterm_lets_the_running_job_finish_and_keeps_the_queued_one(restart_environ: dict, results_fs, tmp_path: Path, http) -> None:
    first, answer = sigterm_while_running(restart_environ, tmp_path, http)
    assert "running jobs get 540 s to finish" in first.log()
    assert answer.status_code == 200 and answer.json()["status"] == "done"

    second = start_gunicorn_gateway(restart_environ, log_file=tmp_path / "second.log")
    try:
        long = record(second, "long", http)
        assert long["status"] == "done", long
        assert long["progress"]["chunks_written"] == long["progress"]["chunks_total"] == 100
        prefix = restart_environ["GATEWAY_RESULTS_URL"].removeprefix("s3://")
        assert len(chunk_objects(results_fs, f"{prefix}/long/data")) == expected_objects(long)
        assert_values_match_the_seed(zarr.open_group(f"s3://{prefix}/long", mode="r")["data"], seed=5)
        assert wait_until_finished(second, "queued", http)["status"] == "done", "the queued job runs after the restart"
    finally:
        stop_process(second.process, timeout=60)


def test_sigterm_past_the_shutdown_timeout_records_the_job_as_interrupted(restart_environ: dict, results_fs, tmp_path: Path, http) -> None:
    environ = {**restart_environ, "GATEWAY_SHUTDOWN_TIMEOUT": "0.1"}
    first, answer = sigterm_while_running(environ, tmp_path, http)
    assert "job long interrupted: the gateway is stopping" in first.log()
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, "interrupted"), "the waiting caller is told"

    second = start_gunicorn_gateway(environ, log_file=tmp_path / "second.log")
    try:
        long = record(second, "long", http)
        assert (long["status"], long["error"]["code"]) == ("failed", "interrupted")
        prefix = environ["GATEWAY_RESULTS_URL"].removeprefix("s3://")
        assert not results_fs.exists(f"{prefix}/long"), "no partial array is left"
        assert {job["job_id"] for job in http.get(f"{second.url}/jobs", timeout=30).json()["jobs"]} == {"long", "queued"}
    finally:
        stop_process(second.process, timeout=60)
