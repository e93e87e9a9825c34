"""The two S3 keys against a store that enforces IAM policies (moto's): the shipped policies as they stand.

The gateway and its workers write with the key that results_writer_policy.json
governs (the `awsconfig` Secret); notebooks hold the one that
results_reader_policy.json governs (`gateway-results-reader`, through
jupyterhub_values.yaml). A notebook opens every result and record, and can
change none of them.
"""

import json
import os
from collections.abc import Iterator

import fsspec
import pytest
import xarray as xr
from flask.testing import FlaskClient

from conftest import BUCKET
from devtools.processes import stop_process
from helpers import running_app, wait_for
from servers import PROJECT, PolicedS3, start_policed_s3

POLICIES = {name: json.loads((PROJECT / f"results_{name}_policy.json").read_text()) for name in ("writer", "reader")}


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


def readers_files(policed_s3: PolicedS3) -> fsspec.AbstractFileSystem:
    """What a notebook opens results with: s3fs, with the reader's key."""
    reader = policed_s3.environ("reader")
    return fsspec.filesystem(
        "s3", key=reader["AWS_ACCESS_KEY_ID"], secret=reader["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=reader["AWS_ENDPOINT_URL"], skip_instance_cache=True, use_listings_cache=False,
    )  # fmt: skip


def test_the_writers_policy_lets_the_gateway_write_list_and_delete(writer: FlaskClient) -> None:
    wait_for(lambda: writer.get("/readyz").status_code == 200, 30, "readiness, checked in the background")
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
