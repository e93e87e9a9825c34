"""Results that clean up after themselves (ttl, expiry sweeps across restarts) and owners' storage quotas.

Job managers of their own on the shared LocalCluster, each with its own prefix
of the S3 server and settings of seconds.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from conftest import BUCKET
from gateway import services
from helpers import assert_made_from_its_seed, manager_on, random_job, running_app, wait_for, workers_held
from science_gateway.admission import AdmissionRefused
from science_gateway.job_records import DONE, RUNNING
from science_gateway.jobs import JobNotFound
from science_gateway.metrics import GatewayMetrics

SMALL = random_job(seed=4, shape=(200, 200), chunks=(100, 100))


def objects_under(results_fs, path: str) -> list[str]:
    return results_fs.find(path) if results_fs.exists(path) else []


def test_an_expired_result_and_its_record_are_deleted_and_another_owners_are_not(app: Flask, results_fs) -> None:
    prefix = f"{BUCKET}/expiry-{uuid.uuid4().hex[:8]}"
    metrics = GatewayMetrics(running=lambda: 0, queued=lambda: 0, workers=lambda: 0)
    manager = manager_on(app, f"s3://{prefix}", metrics, expiry_interval=0.2)
    manager.start()
    try:
        alices = manager.wait(manager.submit("alices", SMALL, "alice", ttl=2)[0].key)
        bobs = manager.wait(manager.submit("bobs", SMALL, "bob")[0].key)
        assert (alices.status, bobs.status) == (DONE, DONE)
        finished = datetime.fromisoformat(alices.finished_at)
        assert datetime.fromisoformat(alices.expires_at) == finished + timedelta(seconds=2)
        assert bobs.expires_at is None and bobs.ttl is None
        alices_place = f"{prefix}/{alices.place}"
        assert objects_under(results_fs, alices_place)

        def gone() -> bool:
            try:
                manager.get(alices.key)
            except JobNotFound:
                return True
            return False

        wait_for(gone, timeout=30, what="alice's job to expire")
        assert datetime.now(UTC) >= datetime.fromisoformat(alices.expires_at), "not before its time"
        assert not objects_under(results_fs, alices_place), "the result's objects are gone"
        assert not results_fs.exists(f"{prefix}/.jobs/.users/alice/alices.json"), "and its record"
        assert manager.get(bobs.key).status == DONE and objects_under(results_fs, f"{prefix}/{bobs.place}")
        assert results_fs.exists(f"{prefix}/.jobs/.users/bob/bobs.json")
    finally:
        manager.close()
    assert b"gateway_jobs_expired_total 1.0" in metrics.render()[0]


def test_a_running_job_never_expires_and_the_next_gateway_deletes_what_expired_while_none_ran(app: Flask, results_fs) -> None:
    prefix = f"{BUCKET}/expiry-restart-{uuid.uuid4().hex[:8]}"
    first = manager_on(app, f"s3://{prefix}", expiry_interval=0.2)
    first.start()
    try:
        # Held on paused workers, the job runs past its ttl of 1 s however fast the machine.
        with workers_held(services(app).cluster.client()):
            slow, _ = first.submit("slow", random_job(seed=6, shape=(400, 400), chunks=(100, 100)), ttl=1)
            running = wait_for(lambda: (record := first.get(slow.key)).status == RUNNING and record, 60, "the job to start")
            wait_for(lambda: datetime.fromisoformat(running.started_at) + timedelta(seconds=2) < datetime.now(UTC), 10, "its ttl to pass")
            assert first.get(slow.key).status == RUNNING and first.get(slow.key).expires_at is None, "a running job never expires"
        done = first.wait(slow.key)
        assert done.status == DONE, done.error
    finally:
        # Its sweeper stops with it: what expires next is the next gateway's to delete.
        first.close()
    assert_made_from_its_seed(done.url, 6)

    second = manager_on(app, f"s3://{prefix}", expiry_interval=0.2)
    second.start()
    try:
        wait_for(lambda: not results_fs.exists(f"{prefix}/.jobs/slow.json"), timeout=30, what="the next gateway to expire it")
        assert not objects_under(results_fs, f"{prefix}/slow")
        with pytest.raises(JobNotFound):
            second.get(slow.key)
    finally:
        second.close()


def test_a_submission_over_the_owners_quota_is_refused_naming_usage_limit_and_setting(app: Flask) -> None:
    prefix = f"{BUCKET}/quota-{uuid.uuid4().hex[:8]}"
    quota = 2 * SMALL.output.nbytes
    manager = manager_on(app, f"s3://{prefix}", owner_quota_bytes=quota)
    manager.start()
    try:
        first = manager.wait(manager.submit(None, SMALL, "alice")[0].key)
        manager.submit(None, SMALL, "alice")
        with pytest.raises(AdmissionRefused, match="GATEWAY_OWNER_QUOTA_BYTES") as refused:
            manager.submit(None, SMALL, "alice")
        assert manager.usage("alice") == (quota, 2)
        assert manager.submit(None, SMALL, "bob"), "another owner's quota is their own"
        manager.cancel_or_delete(first.key)
        assert manager.submit(None, SMALL, "alice"), "deleting a result frees its bytes"
    finally:
        manager.close()
    error = refused.value
    assert (error.code, error.limit, error.usage, error.setting) == ("quota_exceeded", quota, quota, "GATEWAY_OWNER_QUOTA_BYTES")
    assert f"{quota} bytes" in str(error) and f"adds {SMALL.output.nbytes}" in str(error)


def test_the_api_shows_ttl_expiry_usage_and_quota(s3, results_fs) -> None:
    prefix = f"{BUCKET}/quota-api-{uuid.uuid4().hex[:8]}"
    quota = SMALL.output.nbytes + 1000
    settings = {"GATEWAY_RESULTS_URL": f"s3://{prefix}", "GATEWAY_OWNER_QUOTA_BYTES": str(quota), "GATEWAY_MAX_RESULT_TTL": "3600"}
    with running_app({**os.environ, **settings}, ready_within=120) as app:
        client = app.test_client()
        done = client.get("/submit_job/kept-an-hour?shape=200,200&ttl=3600")
        assert done.status_code == 200, done.json
        assert done.json["ttl"] == 3600 and done.json["expires_at"] is not None
        assert client.get("/usage").json == {"owner": None, "stored_bytes": SMALL.output.nbytes, "jobs": 1, "quota_bytes": quota}
        over = client.post("/jobs", json={"shape": [200, 200]})
        assert over.status_code == 429 and over.headers["Retry-After"]
        assert over.json["error"]["code"] == "quota_exceeded" and over.json["error"]["usage"] == SMALL.output.nbytes
        too_long = client.get("/submit_job/too-long?ttl=3601")
        assert too_long.status_code == 400 and "GATEWAY_MAX_RESULT_TTL" in too_long.json["error"]["message"]
        without = client.post("/jobs", json={"shape": [10, 10], "chunks": [10, 10]})
        assert without.json["ttl"] == 3600, "with only a maximum, that is the default"
        assert f"gateway_stored_bytes {float(SMALL.output.nbytes + 400)}".encode() in client.get("/metrics").data

