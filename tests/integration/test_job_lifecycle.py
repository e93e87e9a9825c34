"""The job lifecycle API on the real stack, every response checked against /openapi.json.

Each test runs on both S3 servers of the suite: rclone's (no conditional writes) and SeaweedFS (with them).
"""

import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import obstore
import pytest
import requests
import zarr

from conftest import BUCKET, SEAWEED_BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3
from helpers import expected_objects, gateways_cluster, object_store, server_fs, wait_for, wait_for_the_stop, wait_for_the_tasks, workers_held
from openapi_check import CheckedHttp, HttpAnswer
from science_gateway.apps.random_array import random_chunk
from science_gateway.region_writes import chunk_selections

# The session fixture of each server, and its bucket.
SERVERS = {"rclone": ("s3", BUCKET), "seaweedfs": ("seaweed", SEAWEED_BUCKET)}
# 10000 chunks in many tasks, held on paused workers (held_then_cancelled) until its cancel reaches them.
BIG_JOB = {"shape": [10000, 10000], "chunks": [100, 100]}
SMALL_JOB = {"shape": [10, 10], "chunks": [10, 10]}


@dataclass
class Lifecycle:
    """The gateway under gunicorn on one of the servers, its results under the prefix ``lifecycle`` of the server's bucket."""

    gateway: RunningGateway
    server: LocalS3
    prefix: str

    @functools.cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        return server_fs(self.server)

    def objects(self, job_id: str) -> list[str]:
        """The keys stored under the job's prefix, listed as the gateway lists them (obstore, no delimiter).

        Not s3fs's ``exists`` or ``find``: on SeaweedFS the prefix of deleted objects stays a directory, which a
        listing with a delimiter shows and a HEAD of ``<prefix>/`` finds (200, ``application/x-directory``), with no
        object in it; s3fs takes it for a directory that exists.
        """
        bucket, _, root = self.prefix.partition("/")
        return [entry["path"] for entry in obstore.list(object_store(self.server, bucket), prefix=f"{root}/{job_id}/").collect()]

    def open_result(self, url: str) -> Any:
        """A job's result, read with the server's credentials (not os.environ's)."""
        options = {"key": self.server.access_key, "secret": self.server.secret_key, "endpoint_url": self.server.endpoint_url}
        return zarr.open_group(url, mode="r", storage_options={**options, "skip_instance_cache": True})

    def cluster(self) -> Any:
        """A client of the gateway's LocalCluster (a context manager): to hold its workers."""
        assert self.gateway.log_file is not None
        return gateways_cluster(self.gateway.log_file.parent)


@pytest.fixture(scope="module", params=list(SERVERS))
def lifecycle(s3: LocalS3, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    """One job at a time, so that a second job is seen queued; results under their own prefix.

    The gateway runs under gunicorn with the chosen server's variables, it and its workers alone: os.environ, which
    the session's other gateways read, keeps rclone's.
    """
    fixture, bucket = SERVERS[request.param]
    server = request.getfixturevalue(fixture)
    prefix = f"{bucket}/lifecycle"
    for gateway in serve_for_module(tmp_path_factory, f"lifecycle-{request.param}", f"s3://{prefix}", server=server, GATEWAY_MAX_RUNNING_JOBS="1"):
        yield Lifecycle(gateway, server, prefix)


@pytest.fixture
def api(lifecycle: Lifecycle, http: requests.Session) -> CheckedHttp:
    return CheckedHttp(http, lifecycle.gateway.url)


def job(api: CheckedHttp, job_id: str) -> dict:
    return api.get(f"/jobs/{job_id}").json


def wait_for_status(api: CheckedHttp, job_id: str, *statuses: str, timeout: float = 120) -> dict:
    return wait_for(lambda: (record := job(api, job_id))["status"] in statuses and record, timeout, f"{job_id} to be {statuses}")


def held_then_cancelled(lifecycle: Lifecycle, api: CheckedHttp, job_id: str, meanwhile: Callable[[], None] = lambda: None) -> HttpAnswer:
    """Submit a job while the workers are held, so that it runs with no task begun, however fast the machine; do
    ``meanwhile``; DELETE it. The answer, once its tasks have stopped."""
    with ThreadPoolExecutor(1) as pool, lifecycle.cluster() as cluster:
        with workers_held(cluster):
            assert api.post("/jobs", json={"job_id": job_id, **BIG_JOB}).status_code == 202
            wait_for_the_tasks(cluster, job_id)
            meanwhile()
            answer = pool.submit(api.delete, f"/jobs/{job_id}")
            wait_for_the_stop(cluster, job_id)
        return answer.result(timeout=120)


def test_a_submitted_job_is_watched_to_done(api: CheckedHttp, lifecycle: Lifecycle) -> None:
    nothing_written = {"chunks_written": 0, "chunks_total": 100}
    with lifecycle.cluster() as cluster, workers_held(cluster):
        response = api.post("/jobs", json={"job_id": "watched", "seed": 11})
        assert response.status_code == 202
        assert response.headers["Location"] == "/jobs/watched"
        # The record as the job was queued, whatever its runner did since.
        assert (response.json["status"], response.json["progress"], response.json["started_at"]) == ("queued", nothing_written, None)
        wait_for_the_tasks(cluster, "watched")
        running = job(api, "watched")
        assert (running["status"], running["progress"], running["finished_at"]) == ("running", nothing_written, None)

    record = wait_for_status(api, "watched", "done")
    assert record["progress"] == {"chunks_written": 100, "chunks_total": 100}
    assert record["submitted_at"] <= record["started_at"] <= record["finished_at"]
    assert record["error"] is None and record["seconds"] > 0
    assert (record["parameters"]["seed"], record["shape"], record["chunks"], record["dtype"]) == (11, [1000, 1000], [100, 100], "float32")
    group = lifecycle.open_result(record["url"])
    assert group.metadata.consolidated_metadata is not None, "a done job's result is marked complete"
    assert len([p for p in lifecycle.fs.find(f"{lifecycle.prefix}/watched/data") if "/c." in p]) == expected_objects(record)


def test_queued_and_running_jobs_are_cancelled_and_never_become_done(api: CheckedHttp, lifecycle: Lifecycle) -> None:
    def queue_two_and_cancel_one() -> None:
        assert lifecycle.objects("big"), "the running job's metadata is stored"
        assert api.post("/jobs", json={"job_id": "waits", **SMALL_JOB}).status_code == 202
        assert api.post("/jobs", json={"job_id": "dropped", **SMALL_JOB}).status_code == 202
        assert job(api, "waits")["status"] == "queued", "one job runs at a time here"
        dropped = api.delete("/jobs/dropped")
        assert dropped.status_code == 200 and dropped.json["status"] == "cancelled"

    cancelled = held_then_cancelled(lifecycle, api, "big", queue_two_and_cancel_one)
    assert cancelled.status_code == 200
    assert cancelled.json["status"] == "cancelled"
    assert cancelled.json["progress"] == {"chunks_written": 0, "chunks_total": 10000}, "no task began on the held workers"

    assert wait_for_status(api, "waits", "done")["progress"]["chunks_written"] == 1
    assert job(api, "big")["status"] == "cancelled" and job(api, "dropped")["status"] == "cancelled"
    assert lifecycle.objects("big") == [], "a cancelled job's metadata and chunks are removed"
    assert lifecycle.objects("dropped") == []


def test_a_cancelled_id_can_be_submitted_again_and_a_finished_job_deleted(api: CheckedHttp, lifecycle: Lifecycle) -> None:
    assert held_then_cancelled(lifecycle, api, "again").json["status"] == "cancelled"

    assert api.post("/jobs", json={"job_id": "again", "seed": 3, **SMALL_JOB}).status_code == 202
    assert wait_for_status(api, "again", "done")["progress"]["chunks_written"] == 1
    assert lifecycle.objects("again")

    assert api.delete("/jobs/again").status_code == 204
    assert api.get("/jobs/again").status_code == 404
    assert lifecycle.objects("again") == []
    assert not lifecycle.fs.exists(f"{lifecycle.prefix}/.jobs/again.json")
    assert api.delete("/jobs/again").status_code == 404


def test_twenty_concurrent_submissions_of_one_id_run_one_job_and_each_gets_it(api: CheckedHttp) -> None:
    def submit(_: int) -> HttpAnswer:
        return api.post("/jobs", json={"job_id": "contended", **SMALL_JOB})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    assert {answer.status_code for answer in answers} <= {200, 202} and len(answers) == 20
    assert len({(answer.json["submitted_at"], answer.json["parameters"]["seed"]) for answer in answers}) == 1, "one job, its seed drawn once"
    listed = [record for record in api.get("/jobs?limit=1000").json["jobs"] if record["job_id"] == "contended"]
    assert len(listed) == 1


def test_a_seed_makes_the_array_bit_identical(api: CheckedHttp, lifecycle: Lifecycle) -> None:
    parameters = {"shape": [500, 300], "chunks": [100, 100], "dtype": "float64"}
    for job_id, seed in (("seed-a", 42), ("seed-b", 42), ("seed-c", 43)):
        assert api.post("/jobs", json={"job_id": job_id, "seed": seed, **parameters}).status_code == 202
    values = {job_id: lifecycle.open_result(wait_for_status(api, job_id, "done")["url"])["data"][:] for job_id in ("seed-a", "seed-b", "seed-c")}
    assert values["seed-a"].dtype == np.float64
    assert np.array_equal(values["seed-a"], values["seed-b"])
    assert not np.array_equal(values["seed-a"], values["seed-c"])
    # The values follow from the seed and each chunk's index alone, not from which worker wrote it.
    expected = np.empty((500, 300))
    for index, selection in enumerate(chunk_selections((500, 300), (100, 100))):
        expected[selection] = random_chunk(42, index, selection, "float64")
    assert np.array_equal(values["seed-a"], expected)


def test_listing_is_newest_first_with_pages_and_filters(api: CheckedHttp) -> None:
    submitted = [f"page-{index:02d}" for index in range(55)]
    for job_id in submitted:
        assert api.post("/jobs", json={"job_id": job_id, **SMALL_JOB}).status_code == 202
    wait_for(lambda: all(job(api, job_id)["status"] == "done" for job_id in submitted[-3:]), 120, "the last jobs to finish")
    wait_for(lambda: all(job(api, job_id)["status"] == "done" for job_id in submitted), 60, "every job to finish")

    pages, cursor = [], None
    while True:
        page = api.get("/jobs?limit=20" + (f"&cursor={cursor}" if cursor else "")).json
        pages.append(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    listed = [record["job_id"] for page in pages for record in page]
    assert all(len(page) == 20 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 20
    assert len(listed) == len(set(listed))
    assert listed == [record["job_id"] for record in api.get("/jobs?limit=1000").json["jobs"]]
    assert [job_id for job_id in listed if job_id.startswith("page-")] == submitted[::-1]
    times = [record["submitted_at"] for page in pages for record in page]
    assert times == sorted(times, reverse=True)

    done = api.get("/jobs?status=done&limit=1000").json["jobs"]
    assert set(submitted) <= {record["job_id"] for record in done}
    assert all(record["status"] == "done" for record in done)
    assert not set(submitted) & {record["job_id"] for record in api.get("/jobs?status=cancelled&limit=1000").json["jobs"]}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/jobs?limit=0", 400, "invalid_parameters"),
        ("/jobs?limit=lots", 400, "invalid_parameters"),
        ("/jobs?status=finished", 400, "invalid_parameters"),
        ("/jobs?cursor=not-a-cursor", 400, "invalid_parameters"),
        ("/jobs?colour=blue", 400, "invalid_parameters"),
        ("/jobs/no-such-job", 404, "job_not_found"),
        ("/jobs/..", 400, "invalid_job_id"),
        ("/submit_job/x?shape=20000,20000&chunks=1000,1000", 413, "job_too_large"),
        ("/submit_job/x?dtype=int8", 400, "invalid_parameters"),
        ("/submit_job/x?wait=perhaps", 400, "invalid_parameters"),
        ("/submit_job/x?seed=1&seed=2", 400, "invalid_parameters"),
    ],
)
def test_bad_requests_name_the_problem(api: CheckedHttp, path: str, status: int, code: str) -> None:
    response = api.get(path)
    assert response.status_code == status
    assert response.json["error"]["code"] == code


def test_submit_job_takes_parameters_and_can_return_at_once(api: CheckedHttp) -> None:
    done = api.get("/submit_job/by-get?seed=5&shape=200,300&chunks=100,100&dtype=float64")
    assert done.status_code == 200
    assert (done.json["status"], done.json["parameters"]["seed"], done.json["shape"], done.json["dtype"]) == ("done", 5, [200, 300], "float64")
    assert done.json["progress"] == {"chunks_written": 6, "chunks_total": 6}

    queued = api.get("/submit_job/by-get-later?wait=false&shape=10,10&chunks=10,10")
    assert queued.status_code == 202 and queued.headers["Location"] == "/jobs/by-get-later"
    assert wait_for_status(api, "by-get-later", "done")["shape"] == [10, 10]


def test_post_without_an_id_gets_a_unique_one(api: CheckedHttp) -> None:
    first = api.post("/jobs", json=SMALL_JOB).json["job_id"]
    second = api.post("/jobs", json={}).json["job_id"]
    assert first != second
    assert job(api, second)["shape"] == [1000, 1000]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": "seed=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415),
        ({"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ({"json": [1, 2]}, 400),
        ({"json": {"job_id": 7}}, 400),
        ({"json": {"shape": [10, 10], "chunks": [20, 20]}}, 400),
        ({"json": {"size": 3}}, 400),
    ],
)
def test_malformed_bodies_are_rejected(api: CheckedHttp, kwargs: dict, status: int) -> None:
    response = api.post("/jobs", **kwargs)
    assert response.status_code == status
    assert response.json["error"]["message"]
