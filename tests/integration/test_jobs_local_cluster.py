"""Jobs on a real 3-worker LocalCluster writing to a real S3 server, through Flask's test client."""

import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing import resource_tracker
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from flask import Flask
from flask.testing import FlaskClient

from conftest import BUCKET
from devtools.local_s3 import LocalS3
from gateway import create_app, services
from helpers import (
    assert_all_gone,
    assert_complete_result,
    assert_made_from_its_seed,
    chunk_objects,
    descendants,
    expected_objects,
    listing,
    manager_on,
    random_job,
    running_app,
    wait_for,
    wait_for_the_stop,
    wait_for_the_tasks,
    workers_held,
)  # fmt: skip
from science_gateway.admission import AdmissionRefused
from science_gateway.job_records import CANCELLED, DONE, RUNNING, JobKey, JobRecord
from science_gateway.jobs import GatewayStopping, JobManager, JobNotFound
from science_gateway.metrics import GatewayMetrics
from science_gateway.results_store import ResultsStore
from science_gateway.settings import load_settings


def test_a_job_writes_a_complete_array_that_zarr_and_xarray_open(client: FlaskClient, results_fs, job_id: str) -> None:
    response = client.get(f"/submit_job/{job_id}")
    assert response.status_code == 200, response.json
    body = response.json
    assert set(body) >= {"job_id", "status", "url", "shape", "chunks", "dtype", "seconds"}
    assert body["job_id"] == job_id
    assert body["url"] == f"s3://{BUCKET}/{job_id}"
    assert body["array_url"] == f"s3://{BUCKET}/{job_id}/data"
    assert body["seconds"] > 0
    assert_complete_result(results_fs, body, BUCKET)
    assert zarr.open_group(body["url"], mode="r").metadata.consolidated_metadata is not None


def test_a_sharded_job_is_the_unsharded_one_bit_for_bit_in_one_object_per_shard(client: FlaskClient, results_fs) -> None:
    suffix = uuid.uuid4().hex[:8]
    sharded = client.get(f"/submit_job/sharded-{suffix}?seed=5&shape=1000,1000&shards=500,1000")
    whole = client.get(f"/submit_job/one-shard-{suffix}?seed=5")
    plain = client.get(f"/submit_job/unsharded-{suffix}?seed=5&shards=none")
    assert [response.status_code for response in (sharded, whole, plain)] == [200, 200, 200]
    assert (sharded.json["shards"], whole.json["shards"], plain.json["shards"]) == ([500, 1000], [1000, 1000], None)
    for body in (sharded.json, whole.json, plain.json):
        values = assert_complete_result(results_fs, body, BUCKET)
        assert_made_from_its_seed(body["url"], 5)
    assert len(chunk_objects(results_fs, f"{BUCKET}/one-shard-{suffix}/data")) == 1, "the default job is one object"
    # No shards is still Zarr 3, which zarr-python 2 cannot read: its readers need GATEWAY_ZARR_FORMAT=2.
    assert zarr.open_group(plain.json["url"], mode="r").metadata.zarr_format == 3
    assert results_fs.exists(f"{BUCKET}/unsharded-{suffix}/data/zarr.json") and not results_fs.exists(f"{BUCKET}/unsharded-{suffix}/data/.zarray")
    opened = xr.open_zarr(sharded.json["url"])["data"]
    assert opened.encoding["chunks"] == (100, 100) and opened.encoding["shards"] == (500, 1000)
    np.testing.assert_array_equal(opened.values, values)


def test_two_jobs_give_different_arrays(client: FlaskClient, results_fs) -> None:
    first = client.get("/submit_job/different-a").json
    second = client.get("/submit_job/different-b").json
    values_a = assert_complete_result(results_fs, first, BUCKET)
    values_b = assert_complete_result(results_fs, second, BUCKET)
    assert not np.array_equal(values_a, values_b)


def test_a_repeat_is_the_same_job_and_other_parameters_are_409_naming_each_and_the_array_stays(
    client: FlaskClient, results_fs, job_id: str
) -> None:
    first = client.get(f"/submit_job/{job_id}?shape=200,300&chunks=100,100")
    assert first.status_code == 200
    before = listing(results_fs, f"{BUCKET}/{job_id}")
    values = zarr.open_group(first.json["url"], mode="r")["data"][:]

    again = client.get(f"/submit_job/{job_id}?shape=200,300&chunks=100,100")
    assert again.status_code == 200 and again.json == first.json, "the same job, its seed drawn the first time"
    posted = client.post("/jobs", json={"job_id": job_id, "shape": [200, 300], "chunks": [100, 100], "seed": first.json["parameters"]["seed"]})
    assert posted.status_code == 200 and posted.json == first.json, "done: 200, not 202"
    other = client.get(f"/submit_job/{job_id}?seed=7&shape=200,300&chunks=100,50&ttl=60")
    assert other.status_code == 409 and other.json["error"]["code"] == "job_exists"
    assert other.json["error"]["differences"] == {
        "seed": {"existing": first.json["parameters"]["seed"], "requested": 7},
        "chunks": {"existing": [100, 100], "requested": [100, 50]},
        "ttl": {"existing": None, "requested": 60},
    }
    assert other.json["error"]["url"] == first.json["url"]
    default_shape = client.get(f"/submit_job/{job_id}")
    assert default_shape.json["error"]["differences"]["shape"] == {"existing": [200, 300], "requested": [1000, 1000]}
    assert listing(results_fs, f"{BUCKET}/{job_id}") == before
    assert np.array_equal(zarr.open_group(first.json["url"], mode="r")["data"][:], values)


def test_concurrent_submissions_of_one_id_run_one_job_and_all_get_it(app: Flask, results_fs, job_id: str) -> None:
    """Held on the workers until every submission has answered or waits: the POSTs find it queued or running."""

    def waits(_: int):
        return app.test_client().get(f"/submit_job/{job_id}?seed=11")

    with ThreadPoolExecutor(8) as pool:
        with workers_held(services(app).cluster.client()):
            waited_for = [pool.submit(waits, index) for index in range(8)]
            with ThreadPoolExecutor(8) as posting:
                posted = list(posting.map(lambda _: app.test_client().post("/jobs", json={"job_id": job_id, "seed": 11}), range(8)))
        waited = [answer.result(timeout=120) for answer in waited_for]
    responses = waited + posted
    assert [response.status_code for response in waited] == [200] * 8
    assert [response.status_code for response in posted] == [202] * 8
    assert {response.json["submitted_at"] for response in responses} == {waited[0].json["submitted_at"]}, "one job"
    assert len([p for p in results_fs.find(f"{BUCKET}/{job_id}/data") if "/c." in p]) == expected_objects(waited[0].json)
    assert_made_from_its_seed(waited[0].json["url"], 11)


@pytest.mark.parametrize(
    "path",
    ["/submit_job/..", "/submit_job/%2e%2e", "/submit_job/a%2Fb", "/submit_job/.zarray", "/submit_job/" + "y" * 129, "/submit_job/a%20b"],
)
def test_bad_ids_leave_the_bucket_unchanged(client: FlaskClient, results_fs, path: str) -> None:
    before = listing(results_fs, BUCKET)
    response = client.get(path)
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_job_id"
    assert response.json["error"]["message"]
    assert listing(results_fs, BUCKET) == before


def test_readyz_reports_workers_and_store(client: FlaskClient) -> None:
    # Readiness is checked every second in the background: the first answer may predate the cluster being up.
    response = wait_for(lambda: (answer := client.get("/readyz")).json["status"] == "ready" and answer, 10, "the readiness check to see the cluster")
    assert response.status_code == 200 and response.json["failing"] == []
    assert response.json["cluster"]["workers"] == 3
    assert response.json["results_store"] == {"ready": True, "url": f"s3://{BUCKET}", "reason": ""}


def test_the_local_workers_have_the_s3_key_but_not_the_gateways_hub_token(app: Flask) -> None:
    assert os.environ["JUPYTERHUB_API_TOKEN"], "the gateway itself holds one, as the Secret gives it"
    seen = services(app).cluster.client().run(lambda: (os.environ.get("JUPYTERHUB_API_TOKEN"), "AWS_SECRET_ACCESS_KEY" in os.environ))
    assert len(seen) == 3 and set(seen.values()) == {("", True)}


def run_with_store(app: Flask, directory: Path, **settings_changes) -> JobRecord:
    """One job on the shared cluster with another results store and settings."""
    manager = manager_on(app, str(directory), **settings_changes)
    manager.start()
    try:
        return manager.wait(manager.submit("on-disk", random_job(seed=1))[0].key)
    finally:
        manager.close()


def test_malformed_and_foreign_records_are_skipped_and_counted_and_the_others_run(app: Flask, results_fs) -> None:
    prefix = f"{BUCKET}/forged-{uuid.uuid4().hex[:8]}"
    store = ResultsStore(f"s3://{prefix}")
    queued = JobRecord("queued-before", random_job(seed=3, shape=(10, 10), chunks=(10, 10)), store.url_for("queued-before"))
    store.write_record(queued.record_name, queued.to_stored())
    # A record rewritten to name another result: deleting its job would delete that result.
    stolen = {**queued.to_stored(), "job_id": "stolen", "place": "queued-before", "owner": "mallory"}
    results_fs.pipe({f"{prefix}/.jobs/broken.json": b'{"job_id": ', f"{prefix}/.jobs/stolen.json": json.dumps(stolen).encode()})
    metrics = GatewayMetrics(running=lambda: 0, queued=lambda: 0, workers=lambda: 0)
    manager = manager_on(app, f"s3://{prefix}", metrics)
    cluster = services(app).cluster.client()
    try:
        with workers_held(cluster):
            manager.start()
            wait_for_the_tasks(cluster, "queued-before")
            assert manager.get(queued.key).status == RUNNING, "read once the records are loaded, and run"
        assert manager.wait(queued.key).status == DONE
        assert manager.readiness() == (True, "")
        assert [record.job_id for record in manager.list(None, 10, None)[0]] == ["queued-before"]
    finally:
        manager.close()
    assert b"gateway_job_records_skipped_total 2.0" in metrics.render()[0]
    assert results_fs.exists(f"{prefix}/.jobs/stolen.json"), "skipped, not deleted: an operator looks at it"


def test_owners_results_never_land_in_the_records_or_an_anonymous_jobs_place(app: Flask, results_fs) -> None:
    prefix = f"{BUCKET}/owners-{uuid.uuid4().hex[:8]}"
    manager = manager_on(app, f"s3://{prefix}")
    manager.start()
    try:
        small = random_job(seed=1, shape=(10, 10), chunks=(10, 10))
        assert manager.wait(manager.submit("alice", small)[0].key).status == DONE
        for owner in ("alice", ".jobs", "../alice"):
            job = manager.wait(manager.submit("run", random_job(seed=2, shape=(10, 10), chunks=(10, 10)), owner)[0].key)
            assert job.status == DONE and job.url.startswith(f"s3://{prefix}/.users/"), job.url
            manager.cancel_or_delete(JobKey(owner, "run"))
    finally:
        manager.close()
    assert {path.rsplit("/", 1)[-1] for path in results_fs.ls(f"{prefix}/alice")} == {"zarr.json", "data"}, "the anonymous job alone"
    assert results_fs.find(f"{prefix}/.jobs") == [f"{prefix}/.jobs/alice.json"]


def test_alice_and_bob_each_have_their_own_job_of_one_id_and_an_old_record_is_renamed(app: Flask, results_fs) -> None:
    prefix = f"{BUCKET}/own-ids-{uuid.uuid4().hex[:8]}"
    store = ResultsStore(f"s3://{prefix}")
    # As a gateway from before per-owner ids left it: carol's record under her job's id alone.
    carols = JobRecord("my-first-job", random_job(seed=3, shape=(10, 10), chunks=(10, 10)), store.url_for("my-first-job"), owner="carol")
    store.write_record("my-first-job.json", carols.to_stored())
    manager = manager_on(app, f"s3://{prefix}")
    manager.start()
    try:
        alices, alice_new = manager.submit("my-first-job", random_job(seed=1, shape=(10, 10), chunks=(10, 10)), "alice")
        bobs, bob_new = manager.submit("my-first-job", random_job(seed=2, shape=(10, 10), chunks=(10, 10)), "bob")
        finished = [manager.wait(key) for key in (alices.key, bobs.key, carols.key)]
    finally:
        manager.close()
    assert alice_new and bob_new and [record.status for record in finished] == [DONE, DONE, DONE], "carol's queued job ran too"
    assert [record.url for record in finished] == [
        f"s3://{prefix}/.users/alice/my-first-job", f"s3://{prefix}/.users/bob/my-first-job", f"s3://{prefix}/my-first-job",
    ]  # fmt: skip
    assert_made_from_its_seed(finished[0].url, 1)
    assert_made_from_its_seed(finished[1].url, 2)
    assert sorted(results_fs.find(f"{prefix}/.jobs")) == [
        f"{prefix}/.jobs/.users/alice/my-first-job.json", f"{prefix}/.jobs/.users/bob/my-first-job.json",
        f"{prefix}/.jobs/.users/carol/my-first-job.json",
    ]  # fmt: skip


def remove(manager: JobManager, key: JobKey) -> None:
    """Cancel the job if it is queued or running, then delete it."""
    while True:
        try:
            manager.cancel_or_delete(key)
        except JobNotFound:
            return


def test_deletes_racing_resubmissions_of_one_id_leave_every_runner_alive_and_the_store_consistent(app: Flask, results_fs) -> None:
    prefix = f"{BUCKET}/race-{uuid.uuid4().hex[:8]}"
    metrics = GatewayMetrics(running=lambda: 0, queued=lambda: 0, workers=lambda: 0)
    manager = manager_on(app, f"s3://{prefix}", metrics, max_running_jobs=2)
    manager.start()
    small = random_job(seed=4, shape=(10, 10), chunks=(10, 10))
    contested = JobKey(None, "contested")
    outcomes: list[str] = []
    failures: list[BaseException] = []

    def resubmit(start: threading.Barrier) -> None:
        try:
            start.wait()
            _, new = manager.submit("contested", small)
            outcomes.append("submitted" if new else "the same job")
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's own thread to fail on
            failures.append(exc)

    def delete(start: threading.Barrier) -> None:
        try:
            start.wait()
            manager.cancel_or_delete(contested)
            outcomes.append("deleted or cancelled")
        except JobNotFound:
            outcomes.append("already gone")
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's own thread to fail on
            failures.append(exc)

    try:
        for round in range(30):
            manager.submit("contested", small)
            remove(manager, contested)
            manager.submit("contested", small)
            # Cancelled if it had not finished, deleted if it had: never done after its DELETE, whichever it was.
            answer = manager.cancel_or_delete(contested)
            if answer is None:
                with pytest.raises(JobNotFound):
                    manager.get(contested)
                assert not results_fs.exists(f"{prefix}/contested")
            else:
                assert (answer.status, manager.get(contested).status) == ("cancelled", "cancelled")
            start = threading.Barrier(2)
            racers = [threading.Thread(target=action, args=(start,)) for action in ((delete, resubmit) if round % 2 else (resubmit, delete))]
            for racer in racers:
                racer.start()
            for racer in racers:
                racer.join(timeout=60)
            assert not failures and not any(racer.is_alive() for racer in racers), failures
            try:
                final = manager.wait(contested)
            except JobNotFound:
                assert not results_fs.exists(f"{prefix}/contested") and not results_fs.exists(f"{prefix}/.jobs/contested.json")
                continue
            if final.status == DONE:
                assert_made_from_its_seed(final.url, small.parameters["seed"])
            remove(manager, contested)
        assert manager.wait(manager.submit("after-the-race", small)[0].key).status == DONE, "the runners still run jobs"
    finally:
        manager.close()
    assert b"gateway_job_runner_errors_total 0.0" in metrics.render()[0]
    assert {"submitted", "deleted or cancelled"} <= set(outcomes), outcomes


def test_alices_burst_delays_bobs_job_by_one_job_at_most(app: Flask) -> None:
    manager = manager_on(app, f"s3://{BUCKET}/fair-{uuid.uuid4().hex[:8]}", max_running_jobs=1)
    manager.start()
    small = random_job(seed=1, shape=(100, 100), chunks=(10, 10))
    try:
        # Alice's first job holds the one slot, on paused workers, while the burst queues.
        with workers_held(services(app).cluster.client()):
            alices = [manager.submit(None, small, "alice")[0].key]
            wait_for(lambda: manager.get(alices[0]).status == RUNNING, timeout=60, what="alice's first job to start")
            alices += [manager.submit(None, small, "alice")[0].key for _ in range(11)]
            bobs = manager.submit(None, small, "bob")[0].key
            bob_queued_by = datetime.now(UTC).isoformat(timespec="microseconds")
        finished = [manager.wait(key) for key in [*alices, bobs]]
    finally:
        manager.close()
    assert all(record.status == DONE for record in finished)
    bob, alices_records = finished[-1], finished[:-1]
    still_queued = [record for record in alices_records if record.started_at > bob_queued_by]
    assert len(still_queued) >= 2, "the burst was still queued when bob's job was: the test's set-up did what it must"
    # Once his job is queued, owners take turns: at most one more of hers goes first.
    ahead_of_bob = [record.job_id for record in still_queued if record.started_at < bob.started_at]
    assert len(ahead_of_bob) <= 1, (bob, ahead_of_bob)


def test_an_owner_over_the_cap_of_queued_and_running_jobs_is_refused_and_others_are_not(app: Flask) -> None:
    manager = manager_on(app, f"s3://{BUCKET}/cap-{uuid.uuid4().hex[:8]}", max_running_jobs=1, max_jobs_per_owner=3)
    manager.start()
    small = random_job(seed=1, shape=(10, 10), chunks=(10, 10))
    try:
        # Held on paused workers: none of alice's three can finish while the fourth is refused.
        with workers_held(services(app).cluster.client()):
            alices = [manager.submit(None, small, "alice")[0].key for _ in range(3)]
            with pytest.raises(AdmissionRefused, match="GATEWAY_MAX_JOBS_PER_OWNER") as refused:
                manager.submit(None, small, "alice")
            bobs = manager.submit(None, random_job(seed=2, shape=(10, 10), chunks=(10, 10)), "bob")[0].key
        # Cancelled, or done and deleted: either way they no longer count (a running job's cancel waits for its tasks).
        for key in alices:
            manager.cancel_or_delete(key)
        assert manager.wait(bobs).status == DONE
        assert manager.submit(None, small, "alice")[1], "finished jobs no longer count"
    finally:
        manager.close()
    assert (refused.value.code, refused.value.limit) == ("too_many_jobs_of_owner", 3)


@pytest.mark.parametrize(
    ("limit", "burst"),
    [
        ({"max_jobs_per_owner": 2}, "too_many_jobs_of_owner"),
        ({"owner_quota_bytes": 800}, "quota_exceeded"),
        ({"max_records_per_owner": 2}, "too_many_records_of_owner"),
    ],
)
def test_a_burst_of_concurrent_submissions_by_one_owner_never_passes_a_limit_together(app: Flask, limit: dict, burst: str) -> None:
    """Held on paused workers, none of the accepted jobs can finish and free its share while the burst arrives."""
    manager = manager_on(app, f"s3://{BUCKET}/burst-{uuid.uuid4().hex[:8]}", **limit)
    manager.start()
    small = random_job(seed=1, shape=(10, 10), chunks=(10, 10))  # 400 bytes: two fit in the quota

    def submit(index: int) -> str:
        try:
            manager.submit(f"burst-{index}", small, "alice")
        except AdmissionRefused as refused:
            return refused.code
        return "accepted"

    try:
        with workers_held(services(app).cluster.client()), ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(submit, range(30)))
    finally:
        manager.close()
    assert sorted(answers) == ["accepted"] * 2 + [burst] * 28


def test_finished_jobs_count_in_an_owners_records_and_a_cancelled_ones_id_may_be_used_again(app: Flask) -> None:
    """One job at a time, held on paused workers: the two after it are queued, then cancelled, finished yet each with a record."""
    manager = manager_on(app, f"s3://{BUCKET}/records-{uuid.uuid4().hex[:8]}", max_records_per_owner=3, max_running_jobs=1)
    manager.start()
    small = random_job(seed=1, shape=(10, 10), chunks=(10, 10))
    cluster = services(app).cluster.client()
    try:
        with ThreadPoolExecutor(1) as pool:
            with workers_held(cluster):
                held = manager.submit(f"held-{uuid.uuid4().hex[:8]}", random_job(seed=2, shape=(1000, 1000), chunks=(100, 100)), "alice")[0].key
                for job_id in ("first", "second"):
                    assert manager.cancel_or_delete(manager.submit(job_id, small, "alice")[0].key).status == CANCELLED
                with pytest.raises(AdmissionRefused, match="GATEWAY_MAX_RECORDS_PER_OWNER") as refused:
                    manager.submit("third", small, "alice")
                assert manager.submit("first", small, "alice")[1], "a cancelled job's id replaces its record"
                assert manager.submit("bobs", small, "bob")[1], "each owner has records of their own"
                cancelling = pool.submit(manager.cancel_or_delete, held)
                wait_for_the_stop(cluster, held.job_id)
            assert cancelling.result(timeout=120).status == CANCELLED
    finally:
        manager.close()
    assert (refused.value.code, refused.value.limit, refused.value.setting) == ("too_many_records_of_owner", 3, "GATEWAY_MAX_RECORDS_PER_OWNER")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_plain_directory_store_in_either_zarr_format(app: Flask, tmp_path: Path, zarr_format: int) -> None:
    record = run_with_store(app, tmp_path, zarr_format=zarr_format)
    assert record.status == "done", record.error
    assert record.url == f"{tmp_path.as_uri()}/on-disk"
    array = zarr.open_group(record.url, mode="r")["data"]
    assert array.metadata.zarr_format == zarr_format
    assert array.shape == (1000, 1000) and array.dtype == np.float32
    chunk_files = [p for p in (tmp_path / "on-disk" / "data").rglob("*") if p.is_file() and not p.name.startswith((".z", "zarr.json"))]
    assert len(chunk_files) == 100
    assert xr.open_zarr(record.url)["data"].dims == ("y", "x")


def test_a_job_over_its_timeout_is_cancelled_and_leaves_nothing(app: Flask, tmp_path: Path) -> None:
    record = run_with_store(app, tmp_path, job_timeout=0.001)
    assert record.status == "failed"
    assert record.error["code"] == "job_timeout" and "GATEWAY_JOB_TIMEOUT" in record.error["message"]
    assert not (tmp_path / "on-disk").exists()


def test_a_missing_bucket_is_a_storage_error_without_credentials(s3: LocalS3) -> None:
    with running_app({"GATEWAY_RESULTS_URL": "s3://no-such-bucket", "GATEWAY_N_WORKERS": "1"}, ready_within=60) as app:
        http = app.test_client()
        # Readiness is checked in the background every second: until the first check, the
        # answer may be the job records' loader's, which names the missing bucket too.
        ready = wait_for(lambda: not (answer := http.get("/readyz")).json["results_store"]["ready"] and answer, 10, "readiness")
        # The process serves, and says what is out.
        assert ready.status_code == 200 and ready.json["status"] == "degraded" and "results_store" in ready.json["failing"]
        assert "s3://no-such-bucket does not exist" in ready.json["results_store"]["reason"]

        response = http.get("/submit_job/nowhere")
        # The records are read from the store, which cannot be read: try again later, the part of /readyz named.
        assert (response.status_code, response.headers["Retry-After"]) == (503, "10")
        assert (response.json["error"]["code"], response.json["error"]["dependency"]) == ("storage_error", "job_records")
        assert "s3://no-such-bucket" in response.json["error"]["message"]
        assert "does not exist" in response.json["error"]["message"]
        assert s3.secret_key not in response.get_data(as_text=True)
    assert not (s3.data_dir / "no-such-bucket").exists(), "the service must never create buckets"


def test_closing_the_app_shuts_its_local_cluster_down(s3: LocalS3) -> None:
    # multiprocessing's resource tracker, started by this process's first LocalCluster, lives as long as this process.
    resource_tracker.ensure_running()
    already_running = {process.pid for process in descendants(os.getpid())}
    app = create_app(load_settings({"GATEWAY_RESULTS_URL": f"s3://{BUCKET}/closing-{uuid.uuid4().hex[:8]}"}))
    assert services(app).cluster.wait_until_ready(60)
    started = [process for process in descendants(os.getpid()) if process.pid not in already_running]
    assert len(started) >= 3, "three worker processes should have started"

    services(app).close()

    assert_all_gone(started, timeout=30)
    assert app.test_client().get("/readyz").status_code == 503


def test_adaptive_workers_rise_under_a_burst_and_return_to_the_minimum(s3: LocalS3, measured) -> None:
    results_url = f"s3://{BUCKET}/adaptive-{uuid.uuid4().hex[:8]}"
    settings = load_settings({**os.environ, "GATEWAY_RESULTS_URL": results_url, "GATEWAY_N_WORKERS": "1", "GATEWAY_ADAPTIVE_MAX_WORKERS": "3"})
    # Dask adds workers when the work in hand would take longer than this (5 s by default): the
    # burst here is less, so the target is shorter (an operator's dask setting too).
    with dask.config.set({"distributed.adaptive.target-duration": "100ms"}):
        app = create_app(settings)
        cluster = services(app).cluster
        ready = cluster.wait_until_ready(120)
    try:
        assert ready, cluster.status().reason
        api = app.test_client()
        # The one worker paused, the burst's tasks wait on the scheduler however fast the machine; the workers
        # Dask adds are not paused, and run them.
        with workers_held(cluster.client()):
            for index in range(4):
                assert api.post("/jobs", json={"job_id": f"burst-{uuid.uuid4().hex[:8]}-{index}", "shape": [1000, 1000]}).status_code == 202
            most = wait_for(lambda: (workers := cluster.status().workers) >= 2 and workers, 120, "more workers under the burst")
        wait_for(lambda: not api.get("/jobs?status=running").json["jobs"] and not api.get("/jobs?status=queued").json["jobs"], 300, "the burst to end")
        wait_for(lambda: cluster.status().workers == 1, 120, "the workers to return to the minimum")
        assert cluster.status().wanted_workers == 1 and cluster.status().ready
    finally:
        services(app).close()
    measured(f"adaptive: 1 to {most} workers under a burst of 4 jobs, back to 1 once idle")


def test_zarr_2_on_s3_reads_back_with_zarr_and_xarray(app: Flask) -> None:
    url = f"s3://{BUCKET}/zarr2-{uuid.uuid4().hex[:8]}"
    manager = manager_on(app, url, zarr_format=2)
    manager.start()
    try:
        record = manager.wait(manager.submit("on-s3", random_job(seed=8, shape=(250, 120), chunks=(100, 50)))[0].key)
    finally:
        manager.close()
    assert record.status == DONE, record.error
    array = zarr.open_group(record.url, mode="r")["data"]
    assert array.metadata.zarr_format == 2 and array.shards is None, "zarr 2 cannot shard: one object per chunk"
    assert_made_from_its_seed(record.url, seed=8)
    assert xr.open_zarr(record.url)["data"].dims == ("y", "x")


def test_a_result_in_the_bucket_without_a_record_is_never_overwritten(client: FlaskClient, results_fs, job_id: str) -> None:
    """Someone else's array where the id would write, with no job record of this gateway: 409, and it stays."""
    results_fs.pipe(f"{BUCKET}/{job_id}/data/zarr.json", b'{"theirs": true}')
    response = client.get(f"/submit_job/{job_id}")
    assert response.status_code == 409 and response.json["error"]["code"] == "job_exists"
    assert response.json["error"]["url"] == f"s3://{BUCKET}/{job_id}"
    assert results_fs.cat(f"{BUCKET}/{job_id}/data/zarr.json") == b'{"theirs": true}'
    assert client.get(f"/jobs/{job_id}").status_code == 404, "and no record was made of it"


def test_a_stopping_gateway_takes_no_new_job_and_still_answers_a_repeat_of_a_done_one(app: Flask) -> None:
    manager = manager_on(app, f"s3://{BUCKET}/stopping-{uuid.uuid4().hex[:8]}")
    manager.start()
    small = random_job(seed=1, shape=(10, 10), chunks=(10, 10))
    try:
        done = manager.wait(manager.submit("early", small)[0].key)
        manager.stop_starting_jobs()
        with pytest.raises(GatewayStopping, match="takes no new jobs") as refused:
            manager.submit("late", random_job(seed=1))
        assert manager.submit("early", small) == (done, False)
    finally:
        manager.close()
    assert (refused.value.status, refused.value.code, refused.value.headers()) == (503, "gateway_stopping", {"Retry-After": "10"})


def _close_soon(dask_scheduler) -> None:
    # After this call has answered: the client then finds its scheduler gone, as when it dies.
    dask_scheduler.loop.add_callback(dask_scheduler.close)


def test_a_lost_local_cluster_is_reported_and_the_next_job_gets_a_new_one(s3: LocalS3, results_fs) -> None:
    environ = {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{BUCKET}/local-lost", "GATEWAY_N_WORKERS": "1"}
    with running_app(environ, ready_within=60) as app:
        http = app.test_client()
        lost = services(app).cluster.client()
        lost_scheduler = lost.scheduler.address

        lost.run_on_scheduler(_close_soon)

        reported = wait_for(lambda: "was lost" in (answer := http.get("/readyz")).text and answer, 60, "the loss reported")
        assert reported.status_code == 200 and "cluster" in reported.json["failing"] and "starting a new one" in reported.json["message"]
        response = http.get("/submit_job/after-the-loss")
        assert response.status_code == 200, response.json
        assert_complete_result(results_fs, response.json, f"{BUCKET}/local-lost")
        assert services(app).cluster.client().scheduler.address != lost_scheduler
        # Readiness is checked every second in the background; the bound only turns a failure into a report.
        wait_for(lambda: http.get("/readyz").json["status"] == "ready", 60, "readiness with the new cluster")
