"""The three S3 keys against a store that enforces IAM policies (moto's): the shipped policies as they stand.

The gateway writes, lists and deletes with the key that results_writer_policy.json
governs (the `awsconfig` Secret), and so do its LocalCluster's workers, processes
of its own pod. The workers of its Dask Gateway clusters hold the one that
results_workers_policy.json governs (`gateway-results-workers`, mounted by the
shipped options handler): they put results and get their sources, and can list,
delete, read or write no record. Notebooks that an operator chooses to give a
key hold the one that results_reader_policy.json governs (`gateway-results-reader`):
it opens every result and record, and can change none of them.
"""

import json
import os
from collections.abc import Iterator

import fsspec
import numpy as np
import psutil
import pytest
import requests
import xarray as xr
import zarr
from flask.testing import FlaskClient

from conftest import BUCKET
from devtools.gunicorn_gateway import RunningGateway, start_gunicorn_gateway
from devtools.processes import stop_process
from helpers import descendants, finished_job, new_secret, running_app, wait_for
from science_gateway.region_writes import _Sources
from servers import PROJECT, DaskGatewayServer, PolicedS3, dask_gateway_login_environ, start_dask_gateway_server, start_policed_s3

SHIPPED = {name: json.loads((PROJECT / f"results_{name}_policy.json").read_text()) for name in ("writer", "workers", "reader")}
# A result the workers write and then read as a source, and one of each Zarr format that the tests write.
SOURCE_JOB = "put-by-workers"
SOURCES_BY_FORMAT = {2: "zarr-2-source", 3: "zarr-3-source"}
# S3 refuses a GET of an object that does not exist with 403 to a key that may not list the bucket, as the
# workers' may not; moto answers 404. Denying the workers' key the documents these results lack gives it S3's answer.
ABSENT_DOCUMENTS = [
    *(f"{place}/{name}" for place in (SOURCE_JOB, SOURCES_BY_FORMAT[3]) for name in (".zgroup", ".zattrs", ".zmetadata")),
    f"{SOURCES_BY_FORMAT[2]}/zarr.json",
]
AS_S3_ANSWERS = {"Effect": "Deny", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{BUCKET}/{key}" for key in ABSENT_DOCUMENTS]}
POLICIES = {**SHIPPED, "workers": {**SHIPPED["workers"], "Statement": [*SHIPPED["workers"]["Statement"], AS_S3_ANSWERS]}}
# The identity of the gateway's own clusters in the test's Dask Gateway (a password login has no hub service names).
GATEWAYS_IDENTITY = "science-gateway"


@pytest.fixture(scope="module")
def policed_s3(tmp_path_factory: pytest.TempPathFactory, audited_secrets: list[str]) -> Iterator[PolicedS3]:
    server = start_policed_s3(tmp_path_factory.mktemp("policed-s3"), BUCKET, POLICIES)
    audited_secrets.extend(secret for _, secret in server.keys.values())
    yield server
    stop_process(server.process, timeout=30)


@pytest.fixture(scope="module")
def writer(policed_s3: PolicedS3) -> Iterator[FlaskClient]:
    """The gateway, and its LocalCluster's workers, with the writer's key in their environment as the Secret puts it."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in policed_s3.environ("writer").items():
            patch.setenv(name, value)
        with running_app({**os.environ, "GATEWAY_RESULTS_URL": f"s3://{BUCKET}", "GATEWAY_N_WORKERS": "1"}, ready_within=120) as app:
            yield app.test_client()


@pytest.fixture(scope="module")
def on_dask_gateway(policed_s3: PolicedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, DaskGatewayServer]]:
    """The gateway under gunicorn with the writer's key, as the `awsconfig` Secret gives it, and its cluster on a real
    dask-gateway-server, whose shipped options handler mounts the workers' Secret, and nothing else of S3, into its workers."""
    password = new_secret()
    workdir = tmp_path_factory.mktemp("workers-key")
    server = start_dask_gateway_server(workdir, {"gateway-results-workers": policed_s3.environ("workers")}, password, results_writer=GATEWAYS_IDENTITY)
    try:
        environ = {
            **os.environ, **policed_s3.environ("writer"), "GATEWAY_RESULTS_URL": f"s3://{BUCKET}", "GATEWAY_N_WORKERS": "1",
            **dask_gateway_login_environ(server.address, server.proxy_address, GATEWAYS_IDENTITY, password),
        }  # fmt: skip
        gateway = start_gunicorn_gateway(environ, log_file=workdir / "gateway.log")
        try:
            yield gateway, server
        finally:
            stop_process(gateway.process, timeout=60)
    finally:
        stop_process(server.process, timeout=60)


def files_of(policed_s3: PolicedS3, policy: str) -> fsspec.AbstractFileSystem:
    """s3fs with the key that ``policy`` governs: what a notebook opens results with, with the reader's."""
    key = policed_s3.environ(policy)
    return fsspec.filesystem(
        "s3", key=key["AWS_ACCESS_KEY_ID"], secret=key["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=key["AWS_ENDPOINT_URL"], skip_instance_cache=True, use_listings_cache=False,
    )  # fmt: skip


def readers_files(policed_s3: PolicedS3) -> fsspec.AbstractFileSystem:
    return files_of(policed_s3, "reader")


def test_the_writers_policy_lets_the_gateway_write_list_and_delete(writer: FlaskClient) -> None:
    wait_for(lambda: writer.get("/readyz").json["status"] == "ready", 30, "readiness, checked in the background")
    assert writer.get("/submit_job/under-policy").json["status"] == "done"
    assert writer.get("/submit_job/to-delete?shape=100,100").json["status"] == "done"

    assert writer.delete("/jobs/to-delete").status_code == 204
    assert [job["job_id"] for job in writer.get("/jobs").json["jobs"]] == ["under-policy"]


def test_a_notebook_opens_every_result_and_record_with_the_readers_key(writer: FlaskClient, policed_s3: PolicedS3) -> None:
    job = writer.get("/submit_job/for-the-reader?seed=5").json
    fs = readers_files(policed_s3)

    opened = xr.open_zarr(fs.get_mapper(job["url"].removeprefix("s3://")))
    record = json.loads(fs.cat(f"{BUCKET}/.jobs/for-the-reader.json"))

    assert opened["data"].shape == (1000, 1000) and float(opened["data"].max()) <= 1.0
    assert record["status"] == "done" and record["work"]["parameters"]["seed"] == 5


def test_the_readers_key_can_change_no_record_and_no_result(writer: FlaskClient, policed_s3: PolicedS3) -> None:
    job = writer.get("/submit_job/not-for-changing").json
    fs = readers_files(policed_s3)
    record_path = f"{BUCKET}/.jobs/not-for-changing.json"
    record = fs.cat(record_path)
    chunk = next(path for path in fs.find(job["url"].removeprefix("s3://")) if "/data/c" in path)

    forged = json.dumps({**json.loads(record), "owner": "mallory"}).encode()
    for attempt in (
        lambda: fs.pipe(record_path, forged),
        lambda: fs.pipe(f"{BUCKET}/.jobs/planted.json", forged),
        lambda: fs.pipe(chunk, b"\0" * 16),
        lambda: fs.rm_file(chunk),
    ):
        with pytest.raises(PermissionError):
            attempt()

    assert fs.cat(record_path) == record and fs.exists(chunk)
    assert not fs.exists(f"{BUCKET}/.jobs/planted.json")


def posted(gateway: RunningGateway, body: dict) -> dict:
    answer = requests.post(f"{gateway.url}/jobs", json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    return finished_job(lambda: requests.get(f"{gateway.url}/jobs/{body['job_id']}", timeout=10).json(), 180, body["job_id"])


def test_the_gateways_dask_workers_write_and_read_sources_with_the_workers_key_and_never_hold_the_gateways(
    on_dask_gateway: tuple[RunningGateway, DaskGatewayServer], policed_s3: PolicedS3
) -> None:
    gateway, server = on_dask_gateway
    gateway.wait_until_ready(120)
    source = posted(gateway, {"app": "random-array", "job_id": SOURCE_JOB, "parameters": {"shape": [200, 200], "chunks": [100, 100]}})
    coarse = posted(gateway, {"app": "coarsen", "job_id": "coarsened-by-workers", "parameters": {"source": SOURCE_JOB, "factor": 2}})

    assert (source["status"], coarse["status"]) == ("done", "done"), (source["error"], coarse["error"])
    fs = files_of(policed_s3, "writer")
    values = xr.open_zarr(fs.get_mapper(source["url"].removeprefix("s3://")))["data"].values
    coarsened = xr.open_zarr(fs.get_mapper(coarse["url"].removeprefix("s3://")))["data"].values
    np.testing.assert_allclose(coarsened, values.reshape(100, 2, 100, 2).mean(axis=(1, 3)), rtol=1e-6)
    # The workers read the array for its picture too; the gateway keeps the picture.
    picture = requests.get(f"{gateway.url}/jobs/{SOURCE_JOB}/preview.png", params={"size": "thumbnail"}, timeout=120)
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    workers = [process.environ() for process in descendants(server.process.pid) if "worker" in process.cmdline()]
    assert len(workers) == 1 and workers[0]["AWS_ACCESS_KEY_ID"] == policed_s3.keys["workers"][0]
    gateways_secret = policed_s3.keys["writer"][1]
    assert not [process for process in descendants(server.process.pid) if gateways_secret in str(process.environ())]
    assert gateways_secret not in str(psutil.Process(server.process.pid).environ()), "nor Dask Gateway's server"


def test_the_workers_key_puts_and_gets_results_and_lists_deletes_and_touches_no_record_or_preview(
    writer: FlaskClient, policed_s3: PolicedS3
) -> None:
    job = writer.get("/submit_job/out-of-the-workers-reach").json
    record_path = f"{BUCKET}/.jobs/out-of-the-workers-reach.json"
    chunk = next(path for path in files_of(policed_s3, "writer").find(job["url"].removeprefix("s3://")) if "/data/c" in path)
    fs = files_of(policed_s3, "workers")

    fs.pipe(f"{BUCKET}/written-by-a-worker/data/c/0/0", b"\1" * 16)
    assert fs.cat(f"{BUCKET}/written-by-a-worker/data/c/0/0") == b"\1" * 16 and len(fs.cat(chunk)) > 0
    for attempt in (
        lambda: fs.ls(BUCKET),
        lambda: fs.ls(job["url"].removeprefix("s3://")),
        lambda: fs.rm_file(chunk),
        lambda: fs.cat(record_path),
        lambda: fs.pipe(record_path, b"{}"),
        lambda: fs.pipe(f"{BUCKET}/.jobs/planted.json", b"{}"),
        lambda: fs.pipe(f"{BUCKET}/.previews/out-of-the-workers-reach/planted.png", b"\x89PNG"),
    ):
        with pytest.raises(PermissionError):
            attempt()

    assert files_of(policed_s3, "writer").exists(record_path) and files_of(policed_s3, "writer").exists(chunk)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_worker_opens_a_source_of_either_zarr_format_though_its_key_is_refused_every_document_the_source_lacks(
    policed_s3: PolicedS3, zarr_format: int
) -> None:
    writers = files_of(policed_s3, "writer")
    place = SOURCES_BY_FORMAT[zarr_format]
    group = zarr.open_group(writers.get_mapper(f"{BUCKET}/{place}"), mode="w", zarr_format=zarr_format)
    group.create_array("data", shape=(4, 4), chunks=(2, 2), dtype="float32", fill_value=0)[:] = np.arange(16, dtype="float32").reshape(4, 4)
    zarr.consolidate_metadata(group.store)
    absent = [key for key in ABSENT_DOCUMENTS if key.startswith(f"{place}/")]
    assert absent and not any(writers.exists(f"{BUCKET}/{key}") for key in absent)

    with pytest.MonkeyPatch.context() as patch:
        for name, value in policed_s3.environ("workers").items():
            patch.setenv(name, value)
        with pytest.raises(PermissionError):
            files_of(policed_s3, "workers").cat(f"{BUCKET}/{absent[0]}")
        source = _Sources(f"s3://{BUCKET}", {"source": place})["source"]
        assert source[:].tolist() == np.arange(16, dtype="float32").reshape(4, 4).tolist()
