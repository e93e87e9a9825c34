"""Records that always load, and finished results that are never lost: what a start-up and a DELETE make of the store.

Each test has a records prefix of its own under the shared bucket, and a job manager of its own on the shared cluster.
"""

import json
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask

from conftest import BUCKET
from devtools.local_s3 import LocalS3
from gateway import services
from helpers import assert_made_from_its_seed, manager_on, random_job, wait_for, wait_for_the_stop, workers_held
from science_gateway.job_records import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobKey, JobRecord
from science_gateway.metrics import GatewayMetrics
from science_gateway.results_store import ResultsStore, StorageError

SMALL = {"shape": (10, 10), "chunks": (10, 10)}
# Many tasks: seen writing, then held by paused workers until what the test does with it is done.
HELD = {"shape": (2000, 2000), "chunks": (100, 100)}


@pytest.fixture
def prefix() -> str:
    return f"{BUCKET}/kept-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def manager(app: Flask, prefix: str) -> Iterator:
    """A manager running one job at a time, so that a second job is seen queued."""
    manager = manager_on(app, f"s3://{prefix}", max_running_jobs=1)
    manager.start()
    try:
        yield manager
    finally:
        manager.close()


def metrics() -> GatewayMetrics:
    return GatewayMetrics(running=lambda: 0, queued=lambda: 0, workers=lambda: 0)


def started(app: Flask, prefix: str, counted: GatewayMetrics | None = None):
    """A manager of its own whose records are read; closed here if they are not."""
    manager = manager_on(app, f"s3://{prefix}", counted)
    manager.start()
    try:
        wait_for(lambda: manager.readiness()[0], 60, "the records to be read")
    except BaseException:
        manager.close()
        raise
    return manager


def test_records_that_would_stop_a_start_or_a_runner_are_each_skipped_once_and_counted(app: Flask, prefix: str, results_fs) -> None:
    store = ResultsStore(f"s3://{prefix}")
    good = JobRecord("good", random_job(seed=1, **SMALL), store.url_for("good"))
    store.write_record(good.record_name, good.to_stored())
    template = good.to_stored()

    def forged(job_id: str, **changes) -> bytes:
        return json.dumps({**template, "job_id": job_id, "place": job_id, "url": store.url_for(job_id), **changes}).encode()

    results_fs.pipe({
        # A ttl no date can follow: finishing its job overflowed, for ever at each start (running) or in its runner (queued).
        f"{prefix}/.jobs/running-for-ever.json": forged("running-for-ever", status=RUNNING, ttl=10**14),
        f"{prefix}/.jobs/queued-for-ever.json": forged("queued-for-ever", status=QUEUED, ttl=10**14),
        f"{prefix}/.jobs/surrogate.json": forged("surrogate").replace(b'"owner": null', b'"owner": "\\ud800"'),
        f"{prefix}/.jobs/nested.json": b"[" * 100_000,
        f"{prefix}/.jobs/not-a-time.json": forged("not-a-time", submitted_at="yesterday"),
        f"{prefix}/.jobs/no-seconds.json": forged("no-seconds", status=DONE, seconds=float("nan")),
    })  # fmt: skip
    counted = metrics()
    manager = started(app, prefix, counted)
    try:
        assert manager.readiness() == (True, "")
        assert manager.wait(good.key, 120).status == DONE, "the good record's job runs"
        assert [record.job_id for record in manager.list(None, 10, None)[0]] == ["good"]
    finally:
        manager.close()
    assert b"gateway_job_records_skipped_total 6.0" in counted.render()[0], "each skipped once: the start-up was not tried again"


def test_a_job_stored_as_running_whose_result_is_complete_loads_done_with_its_result(app: Flask, prefix: str, results_fs) -> None:
    """As when the last save of its record failed, or the process stopped between the completion marker and that save."""
    first = started(app, prefix)
    try:
        done = first.wait(first.submit("finished", random_job(seed=5, **SMALL))[0].key, 120)
        assert done.status == DONE
    finally:
        first.close()
    stored = json.loads(results_fs.cat(f"{prefix}/.jobs/finished.json"))
    results_fs.pipe(f"{prefix}/.jobs/finished.json", json.dumps({**stored, "status": RUNNING, "finished_at": None}).encode())

    second = started(app, prefix)
    try:
        loaded = second.get(JobKey(None, "finished"))
    finally:
        second.close()
    assert (loaded.status, loaded.error, loaded.chunks_written) == (DONE, None, 1)
    assert json.loads(results_fs.cat(f"{prefix}/.jobs/finished.json"))["status"] == DONE
    assert_made_from_its_seed(f"s3://{prefix}/finished", 5)


def test_a_job_stored_as_running_without_its_completion_marker_is_interrupted_and_its_chunks_removed(
    app: Flask, prefix: str, results_fs
) -> None:
    first = started(app, prefix)
    try:
        first.wait(first.submit("cut-short", random_job(seed=5, **SMALL))[0].key, 120)
    finally:
        first.close()
    stored = json.loads(results_fs.cat(f"{prefix}/.jobs/cut-short.json"))
    results_fs.pipe(f"{prefix}/.jobs/cut-short.json", json.dumps({**stored, "status": RUNNING, "finished_at": None}).encode())
    results_fs.rm(f"{prefix}/cut-short/zarr.json")

    second = started(app, prefix)
    try:
        loaded = second.get(JobKey(None, "cut-short"))
    finally:
        second.close()
    assert (loaded.status, loaded.error["code"]) == (FAILED, "interrupted")
    assert not results_fs.exists(f"{prefix}/cut-short")


def test_a_running_job_deleted_ends_cancelled_and_meanwhile_other_deletes_go_on(app: Flask, manager, prefix: str, results_fs) -> None:
    finished = manager.wait(manager.submit("finished", random_job(seed=1, **SMALL))[0].key, 120)
    cluster = services(app).cluster.client()
    with ThreadPoolExecutor(2) as pool:
        with workers_held(cluster):
            held = manager.submit(f"held-{uuid.uuid4().hex[:8]}", random_job(seed=2, **HELD))[0].key
            wait_for(lambda: manager.get(held).status == RUNNING, 60, "the held job to run")
            cancelling = pool.submit(manager.cancel_or_delete, held)
            # Its tasks told to stop, the DELETE now waits for them, which the held workers keep from beginning.
            wait_for_the_stop(cluster, held.job_id)
            # Bounded so that a DELETE that waited behind the other fails here rather than hanging.
            assert pool.submit(manager.cancel_or_delete, finished.key).result(timeout=60) is None
            assert not cancelling.done(), "the held job's DELETE still waits for its tasks"
        answer = cancelling.result(timeout=120)
    assert answer.status == CANCELLED and answer.error is None
    assert manager.get(held).status == CANCELLED
    assert not results_fs.exists(f"{prefix}/{held.job_id}") and not results_fs.exists(f"{prefix}/finished")
    assert not results_fs.exists(f"{prefix}/.jobs/finished.json")


def test_a_cancellation_the_store_refuses_is_undone_and_the_job_stays_queued(app: Flask, manager, prefix: str, s3: LocalS3) -> None:
    """A job reported cancelled must never run after a restart: its cancellation is stored first, or it is not cancelled."""
    cluster = services(app).cluster.client()
    record_file = s3.data_dir / prefix / ".jobs" / "waiting.json"
    with ThreadPoolExecutor(1) as pool:
        with workers_held(cluster):
            held = manager.submit(f"held-{uuid.uuid4().hex[:8]}", random_job(seed=2, **HELD))[0].key
            waiting = manager.submit("waiting", random_job(seed=3, **SMALL))[0].key
            wait_for(lambda: manager.get(held).status == RUNNING, 60, "the held job to run")
            stored = record_file.read_bytes()
            # The S3 server cannot store an object where it keeps a directory: every PUT of the record fails.
            record_file.unlink()
            (record_file / "blocked").mkdir(parents=True)
            try:
                with pytest.raises(StorageError, match="saving the job record 'waiting.json' failed"):
                    manager.cancel_or_delete(waiting)
                assert manager.get(waiting).status == QUEUED
            finally:
                shutil.rmtree(record_file)
                record_file.write_bytes(stored)
            cancelling = pool.submit(manager.cancel_or_delete, held)
            wait_for_the_stop(cluster, held.job_id)
        assert cancelling.result(timeout=120).status == CANCELLED
    assert manager.wait(waiting, 120).status == DONE, "back in the queue, it runs once the held job has ended"
    assert json.loads(record_file.read_bytes())["status"] == DONE
