"""Faults on real processes: the S3 server stops, a Dask worker dies, a job overruns, the gateway gets SIGTERM.

Whatever happens, a job is never ``done`` with chunks missing, a half-written
array never carries the completion marker, and the service stays up.
"""

import os
import secrets
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
from devtools.processes import on_a_free_port, stop_process
from gateway import services
from helpers import (
    assert_all_gone,
    chunk_objects,
    descendants,
    expected_objects,
    gateways_cluster,
    kubelets_probe_timeout,
    new_secret,
    random_job,
    reachable_cluster,
    wait_for,
    wait_for_the_stop,
    wait_for_the_tasks,
    workers_held,
    workers_running_tasks,
)  # fmt: skip
from science_gateway.apps.random_array import random_chunk
from science_gateway.errors import DEPENDENCY_RETRY_AFTER_SECONDS
from science_gateway.jobs import JobManager
from science_gateway.region_writes import chunk_selections
from science_gateway.results_store import ResultsStore

# Every job here is held where its fault is made, on paused workers (helpers.workers_held), never by its size.
SMALL_JOB = {"shape": [100, 100], "chunks": [10, 10]}


def record(gateway: RunningGateway, job_id: str, http: requests.Session) -> dict:
    return http.get(f"{gateway.url}/jobs/{job_id}", timeout=30).json()


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


# -- the S3 server stops in the middle of a job ---------------------------------


@dataclass
class PrivateStack:
    """A gateway under gunicorn, its cluster reachable (helpers.reachable_cluster in ``directory``), on an S3 server of
    the test's own with the bucket ``results``, which the test stops, pauses or starts again on its ``port``."""

    s3: LocalS3
    gateway: RunningGateway
    port: int
    directory: Path

    def restart_s3(self) -> None:
        self.s3 = start_local_s3(
            self.s3.data_dir, ("results",), access_key=self.s3.access_key, secret_key=self.s3.secret_key, port=self.port,
            log_file=self.directory / "s3.log",
        )  # fmt: skip

    def stored(self, job_id: str) -> tuple[zarr.Array, int]:
        """The job's stored array and how many chunk or shard objects it has, read with the server's key."""
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.s3.environ().items():
                patch.setenv(name, value)
            array = zarr.open_group(f"s3://results/{job_id}", mode="r", storage_options={"skip_instance_cache": True})["data"]
            return array, len(chunk_objects(fsspec.filesystem("s3", skip_instance_cache=True), f"results/{job_id}/data"))


@pytest.fixture
def stack_settings() -> dict[str, str]:
    """Settings of the private stack's gateway beyond its store and cluster: a test parametrizes it to change them."""
    return {}


@pytest.fixture
def private_stack(tmp_path: Path, stack_settings: dict[str, str]) -> Iterator[PrivateStack]:
    credentials = {"access_key": f"fault-access-{secrets.token_hex(4)}", "secret_key": new_secret()}
    # On a free port, another if a process takes it meanwhile; the store starts again on it in the tests.
    s3 = on_a_free_port(lambda free: start_local_s3(tmp_path / "s3", ("results",), **credentials, port=free, log_file=tmp_path / "s3.log"))
    port = urlsplit(s3.endpoint_url).port
    assert port is not None
    stack = None
    try:
        environ = {**os.environ, **s3.environ(), "GATEWAY_RESULTS_URL": "s3://results", **reachable_cluster(tmp_path), **stack_settings}
        stack = PrivateStack(s3, start_gunicorn_gateway(environ, log_file=tmp_path / "gateway.log"), port, tmp_path)
        yield stack
    finally:
        if stack is not None:
            stop_process(stack.gateway.process, timeout=60)
            s3 = stack.s3
        s3.process.send_signal(signal.SIGCONT)
        s3.stop()


def submitted_and_held(stack: PrivateStack, cluster: Any, http: requests.Session, body: dict) -> None:
    """Post the job while ``cluster``'s workers are held, and return once its tasks are sent, none begun."""
    assert http.post(f"{stack.gateway.url}/jobs", json=body, timeout=30).status_code == 202
    wait_for_the_tasks(cluster, body["job_id"])


def test_s3_stopping_mid_job_fails_it_naming_storage_and_the_id_can_run_again(private_stack: PrivateStack, http: requests.Session) -> None:
    stack, gateway = private_stack, private_stack.gateway
    with gateways_cluster(stack.directory) as cluster, workers_held(cluster):
        # The store goes away under a job that has begun writing (its metadata).
        submitted_and_held(stack, cluster, http, {"job_id": "outage"})
        stack.s3.stop()

    failed = wait_until_finished(gateway, "outage", http)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "storage_error"
    assert failed["error"]["message"].startswith("results store error: writing chunks of job 'outage' failed")
    assert stack.s3.secret_key not in str(failed)
    assert not list(stack.s3.data_dir.glob("results/outage/zarr.json")), "no completion marker"
    assert http.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
    degraded = wait_for(
        lambda: not (answer := http.get(f"{gateway.probe_url}/readyz", timeout=30)).json()["results_store"]["ready"] and answer,
        30, "readiness to report the store",
    )  # fmt: skip
    # The process still serves: the Service keeps sending requests, which learn that the store is out.
    assert degraded.status_code == 200 and degraded.json()["status"] == "degraded" and "results_store" in degraded.json()["failing"]
    # A timing that must be asserted: the kubelet counts a probe slower than its timeout (deploy_gateway.yaml) as failed.
    assert degraded.elapsed.total_seconds() < kubelets_probe_timeout(), "a readiness probe answers within the kubelet's timeout"

    stack.restart_s3()
    gateway.wait_until_ready(60)
    again = http.get(f"{gateway.url}/submit_job/outage?shape=1000,1000&seed=3", timeout=120)
    assert again.status_code == 200, again.text
    array, objects = stack.stored("outage")
    assert_values_match_the_seed(array, seed=3)
    assert objects == expected_objects(again.json())
    assert "storage" in gateway.log() and stack.s3.secret_key not in gateway.log()


def test_with_the_store_stopped_readiness_serves_a_submission_gets_503_with_retry_after_and_jobs_go_on_once_it_is_back(
    private_stack: PrivateStack, http: requests.Session
) -> None:
    """The issue's "readiness that serves": one replica, its store stopped and started again on its port and data."""
    stack, gateway = private_stack, private_stack.gateway
    with gateways_cluster(stack.directory) as cluster:
        with workers_held(cluster):
            # Begun before the outage (its record and metadata stored), its tasks held on the workers throughout.
            submitted_and_held(stack, cluster, http, {"job_id": "before-the-outage", "seed": 5, **SMALL_JOB})
            stack.s3.stop()
            degraded = wait_for(
                lambda: not (answer := http.get(f"{gateway.probe_url}/readyz", timeout=30)).json()["results_store"]["ready"] and answer,
                30, "readiness to see the store out",
            )  # fmt: skip
            refused = http.post(f"{gateway.url}/jobs", json={"job_id": "during-the-outage", "seed": 6, **SMALL_JOB}, timeout=120)
            unknown = http.get(f"{gateway.url}/jobs/during-the-outage", timeout=30)
            held = record(gateway, "before-the-outage", http)
            alive = http.get(f"{gateway.probe_url}/healthz", timeout=30)
            stack.restart_s3()
            gateway.wait_until_ready(60)
        # The workers go on, writing to the store that is back.
        before = wait_until_finished(gateway, "before-the-outage", http)

    assert degraded.status_code == 200 and degraded.json()["status"] == "degraded" and "results_store" in degraded.json()["failing"]
    assert alive.status_code == 200
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, str(DEPENDENCY_RETRY_AFTER_SECONDS)), refused.text
    error = refused.json()["error"]
    assert (error["code"], error["dependency"]) == ("storage_error", "results_store") and error["message"].startswith("results store error:")
    assert stack.s3.secret_key not in refused.text
    assert unknown.status_code == 404, "nothing of the refused submission is kept"
    assert held["status"] == "running"
    assert before["status"] == "done", before["error"]
    assert_values_match_the_seed(stack.stored("before-the-outage")[0], seed=5)
    # The refused submission sent again, as the client does after Retry-After, runs.
    again = http.post(f"{gateway.url}/jobs", json={"job_id": "during-the-outage", "seed": 6, **SMALL_JOB}, timeout=60)
    assert again.status_code == 202, again.text
    during = wait_until_finished(gateway, "during-the-outage", http)
    assert during["status"] == "done", during["error"]
    array, objects = stack.stored("during-the-outage")
    assert_values_match_the_seed(array, seed=6)
    assert objects == expected_objects(during)


# -- a Dask worker dies during a job ----------------------------------------------


def a_worker_killed_while_it_runs_a_task(stack: PrivateStack, http: requests.Session) -> dict:
    """The default job held until its tasks exist, then one worker killed while it runs one of them; the job once finished.

    The S3 server is paused meanwhile: a task that begins waits on its first write, on its worker, however fast the machine.
    """
    with gateways_cluster(stack.directory) as cluster:
        with workers_held(cluster):
            submitted_and_held(stack, cluster, http, {"job_id": "worker-dies", "seed": 11})
            stack.s3.process.send_signal(signal.SIGSTOP)
        try:
            (dying, *_) = wait_for(lambda: workers_running_tasks(cluster), 60, "a task of the job to run on a worker")
            psutil.Process(cluster.run(os.getpid, workers=[dying])[dying]).kill()
        finally:
            stack.s3.process.send_signal(signal.SIGCONT)
        job = wait_until_finished(stack.gateway, "worker-dies", http)
        # The nanny brings the worker back: the cluster keeps its size for the next job.
        wait_for(lambda: len(cluster.scheduler_info(n_workers=-1)["workers"]) == 3, 60, "the worker to be restarted")
    return job


def test_a_worker_killed_while_running_a_task_is_replaced_and_the_job_is_done_with_every_chunk(
    private_stack: PrivateStack, http: requests.Session
) -> None:
    job = a_worker_killed_while_it_runs_a_task(private_stack, http)
    assert job["status"] == "done", job["error"]
    array, objects = private_stack.stored("worker-dies")
    assert objects == expected_objects(job)
    assert_values_match_the_seed(array, seed=11, samples=len(chunk_selections(array.shape, array.chunks)))
    assert http.get(f"{private_stack.gateway.url}/submit_job/after-the-worker-died?shape=100,100", timeout=120).json()["status"] == "done"


# Dask gives a task up once its worker died distributed.scheduler.allowed-failures + 1 times; 0 here, so one death.
@pytest.mark.parametrize("stack_settings", [{"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}])
def test_a_task_whose_worker_dies_more_often_than_dask_allows_fails_the_job_naming_the_death(
    private_stack: PrivateStack, http: requests.Session
) -> None:
    job = a_worker_killed_while_it_runs_a_task(private_stack, http)
    assert (job["status"], job["error"]["code"]) == ("failed", "job_failed")
    assert job["error"]["message"] == "job 'worker-dies' failed: a Dask worker died while running it"
    assert not (private_stack.s3.data_dir / "results" / "worker-dies").exists(), "its partial array removed"


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


def sigterm_while_running(
    environ: dict, tmp_path: Path, http: requests.Session, release_once: str
) -> tuple[RunningGateway, requests.Response, requests.Response]:
    """Start a job with a caller waiting for it, held on paused workers, queue another one, send SIGTERM, and let the
    workers go on once the gateway's log says ``release_once`` (or at once when it is empty).

    Return once the gateway has exited, with the waiting caller's answer and the readiness probe's while the job was held.
    """
    gateway = start_gunicorn_gateway({**environ, **reachable_cluster(tmp_path)}, log_file=tmp_path / "first.log")
    dask_processes = descendants(gateway.process.pid)
    with ThreadPoolExecutor(1) as caller:
        with gateways_cluster(tmp_path) as cluster, workers_held(cluster):
            waiting = caller.submit(http.get, f"{gateway.url}/submit_job/long?seed=5", timeout=300)
            wait_for(lambda: http.get(f"{gateway.url}/jobs/long", timeout=30).status_code == 200, 30, "the long job")
            wait_for_the_tasks(cluster, "long")
            http.post(f"{gateway.url}/jobs", json={"job_id": "queued", **SMALL_JOB}, timeout=30).raise_for_status()
            assert record(gateway, "queued", http)["status"] == "queued"

            gateway.process.send_signal(signal.SIGTERM)

            wait_for(lambda: release_once in gateway.log(), 60, f"the gateway to log {release_once!r}")
            draining = http.get(f"{gateway.probe_url}/readyz", timeout=30)
        assert gateway.process.wait(timeout=120) == 0, gateway.log()
        assert_all_gone(dask_processes, timeout=30)
        return gateway, waiting.result(timeout=10), draining


@pytest.fixture
def restart_environ(s3: LocalS3, request: pytest.FixtureRequest) -> dict[str, str]:
    return {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{BUCKET}/sigterm-{request.node.name[-12:]}", "GATEWAY_MAX_RUNNING_JOBS": "1"}


def test_sigterm_lets_the_running_job_finish_and_keeps_the_queued_one(restart_environ: dict, results_fs, tmp_path: Path, http) -> None:
    first, answer, draining = sigterm_while_running(restart_environ, tmp_path, http, release_once="stopping: 1 running jobs get 540 s to finish")
    assert answer.status_code == 200 and answer.json()["status"] == "done"
    # While it finishes, the Service sends new requests elsewhere.
    assert (draining.status_code, draining.json()["error"]["code"]) == (503, "gateway_stopping")

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
    first, answer, _ = sigterm_while_running(environ, tmp_path, http, release_once="job long interrupted: the gateway is stopping")
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
