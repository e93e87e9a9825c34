"""A done job's result read over HTTP at its http_url: ranges, validators, streaming, and nothing outside the job's place.

The gateway here asks nobody's name; who may read whose result is tested on a
real hub (test_jupyterhub.py). Every response is checked against /openapi.json.
"""

import tracemalloc
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from flask import Flask

from conftest import BUCKET
from gateway import services
from helpers import wait_for, workers_held
from openapi_check import CheckedClient, assert_matches_openapi


@pytest.fixture(scope="module")
def done_job(app: Flask) -> dict:
    """A small sharded job, done: a shard, its index at the end, and the metadata documents."""
    response = app.test_client().get(f"/submit_job/read-{uuid.uuid4().hex[:8]}?seed=3&shape=300,200&chunks=100,100&shards=300,200")
    assert response.status_code == 200, response.json
    return response.json


def result_path(job: dict) -> str:
    """The http_url as a path of the test client's host."""
    return urlsplit(job["http_url"]).path


def stored(results_fs, job: dict, key: str) -> bytes:
    return results_fs.cat(f"{job['url'].removeprefix('s3://')}/{key}")


def test_http_url_is_the_results_zarr_group_served_by_this_gateway(done_job: dict) -> None:
    assert done_job["http_url"] == f"http://localhost/jobs/{done_job['job_id']}/result"


@pytest.mark.parametrize("key", ["zarr.json", "data/zarr.json", "data/c.0.0"])
def test_each_object_reads_whole_with_its_validators(app: Flask, done_job: dict, results_fs, key: str) -> None:
    api = CheckedClient(app.test_client())
    response = api.get(f"{result_path(done_job)}/{key}")
    assert response.status_code == 200
    assert response.data == stored(results_fs, done_job, key)
    assert response.headers["ETag"].startswith('"') and response.headers["Last-Modified"].endswith("GMT")
    assert response.headers["Accept-Ranges"] == "bytes" and response.headers["Cache-Control"] == "private, no-cache"
    assert response.mimetype == ("application/json" if key.endswith("zarr.json") else "application/octet-stream")


@pytest.mark.parametrize("asked", ["bytes=-16", "bytes=10-19", "bytes=100-", "bytes=0-0", "bytes=-999999999"])
def test_a_range_of_one_part_answers_206_with_those_bytes(app: Flask, done_job: dict, results_fs, asked: str) -> None:
    """As a sharded read asks for a shard's index (the last bytes) and its inner chunks."""
    whole = stored(results_fs, done_job, "data/c.0.0")
    size = len(whole)
    spans = {"bytes=-16": (size - 16, size), "bytes=10-19": (10, 20), "bytes=100-": (100, size), "bytes=0-0": (0, 1), "bytes=-999999999": (0, size)}
    start, stop = spans[asked]
    response = CheckedClient(app.test_client()).get(f"{result_path(done_job)}/data/c.0.0", headers={"Range": asked})
    assert response.status_code == 206
    assert response.data == whole[start:stop]
    assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
    assert response.headers["Content-Length"] == str(stop - start)


def test_a_range_beyond_the_object_is_416_naming_its_size_and_several_parts_get_the_whole(app: Flask, done_job: dict, results_fs) -> None:
    api = CheckedClient(app.test_client())
    size = len(stored(results_fs, done_job, "zarr.json"))
    beyond = api.get(f"{result_path(done_job)}/zarr.json", headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.json["error"]["code"] == "range_not_satisfiable"
    assert beyond.headers["Content-Range"] == f"bytes */{size}"
    several = api.get(f"{result_path(done_job)}/zarr.json", headers={"Range": "bytes=0-1,4-5"})
    assert several.status_code == 200 and len(several.data) == size


def test_conditional_requests_use_the_stores_etag(app: Flask, done_job: dict) -> None:
    api = CheckedClient(app.test_client())
    path = f"{result_path(done_job)}/data/c.0.0"
    etag = api.get(path).headers["ETag"]
    unchanged = api.get(path, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.data == b"" and unchanged.headers["ETag"] == etag
    assert api.get(path, headers={"If-None-Match": '"another"'}).status_code == 200
    assert api.get(path, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    stale = api.get(path, headers={"Range": "bytes=0-9", "If-Range": '"another"'})
    assert stale.status_code == 200 and len(stale.data) > 10, "a range of an object that has changed is the whole object"


def test_head_answers_the_size_without_a_body(app: Flask, done_job: dict, results_fs) -> None:
    response = app.test_client().head(f"{result_path(done_job)}/data/c.0.0")
    assert response.status_code == 200 and response.data == b""
    assert response.headers["Content-Length"] == str(len(stored(results_fs, done_job, "data/c.0.0")))


@pytest.mark.parametrize("key", ["no-such-object", "data/c.9.9", "..%2F..%2F.jobs", "data/..%2Fzarr.json", "%2E", "data//zarr.json", "a%00b"])
def test_a_key_that_is_no_object_of_the_result_is_404_and_reaches_nothing_outside_it(app: Flask, done_job: dict, key: str) -> None:
    response = CheckedClient(app.test_client()).get(f"{result_path(done_job)}/{key}")
    assert response.status_code == 404 and response.json["error"]["code"] == "object_not_found"


def test_the_results_root_has_no_object_and_an_unknown_jobs_result_is_not_found(app: Flask, done_job: dict) -> None:
    api = CheckedClient(app.test_client())
    assert api.get(result_path(done_job)).json["error"]["code"] == "object_not_found"
    assert api.get("/jobs/never-submitted/result/zarr.json").json["error"]["code"] == "job_not_found"


def test_a_job_that_is_not_done_has_no_result_to_read(app: Flask) -> None:
    job_id = f"held-{uuid.uuid4().hex[:8]}"
    client = app.test_client()
    with workers_held(services(app).cluster.client()):
        assert client.post("/jobs", json={"job_id": job_id, "shape": [100, 100]}).status_code == 202
        wait_for(lambda: client.get(f"/jobs/{job_id}").json["status"] == "running", 60, "the job to run, held on the workers")
        response = CheckedClient(client).get(f"/jobs/{job_id}/result/zarr.json")
    assert response.status_code == 409 and response.json["error"]["code"] == "job_not_done"
    assert response.json["error"]["job"]["status"] == "running"
    wait_for(lambda: client.get(f"/jobs/{job_id}").json["status"] == "done", 60, "the job to finish once the workers go on")


def streamed(app: Flask, path: str) -> Iterator[bytes]:
    response = app.test_client().get(path, buffered=False)
    assert_matches_openapi("GET", path, response)
    try:
        yield from response.response
    finally:
        response.close()


def result_reads(app: Flask) -> int:
    """The gateway_result_reads gauge: objects being sent now."""
    (line,) = [line for line in app.test_client().get("/metrics").text.splitlines() if line.startswith("gateway_result_reads ")]
    return int(float(line.split()[1]))


def test_a_read_holds_its_place_until_its_body_is_sent_or_closed(app: Flask, done_job: dict) -> None:
    path = f"{result_path(done_job)}/data/c.0.0"
    sent = app.test_client().get(path, buffered=False)
    blocks = iter(sent.response)
    assert next(blocks) and result_reads(app) == 1, "taken while the body is being sent"
    list(blocks)
    assert result_reads(app) == 0, "given back after the last block, whether or not the body is closed"
    sent.close()
    assert result_reads(app) == 0
    dropped = app.test_client().get(path, buffered=False)
    assert result_reads(app) == 1
    dropped.close()  # as a server does when its reader goes away before the first block
    assert result_reads(app) == 0
    assert app.test_client().head(path).status_code == 200 and result_reads(app) == 0, "nothing to send: no place held"


def test_a_64_mb_object_is_streamed_never_held_whole(app: Flask, results_fs) -> None:
    job_id = f"one-shard-{uuid.uuid4().hex[:8]}"
    job = app.test_client().get(f"/submit_job/{job_id}?shape=4000,4000&chunks=1000,1000&shards=4000,4000").json
    assert job["status"] == "done", job
    size = results_fs.size(f"{BUCKET}/{job_id}/data/c.0.0")
    assert size > 64 * 10**6

    tracemalloc.start()
    try:
        received = sum(len(block) for block in streamed(app, f"{result_path(job)}/data/c.0.0"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    # A block at a time (object_reads.BLOCK_BYTES, 1 MiB), with the store client's buffers beside it.
    assert peak < 8 * 2**20, f"the gateway allocated {peak / 2**20:.0f} MB to send a {size / 2**20:.0f} MB object"
