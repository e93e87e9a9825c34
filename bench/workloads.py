"""The ways of making a job's result that the benchmark compares.

- floors: a job's objects written straight to S3 from this process with obstore (the fastest client here, and the
  one the gateway's workers write with), bytes made before the clock, at the best number of requests in flight:
  ``floor`` the unsharded default job's 100 chunks of 40 kB and its record; ``floor-sharded`` exactly the objects a
  sharded default job leaves, all at once; ``floor-large`` 100 chunks of 4 MB.
- baseline: the straightforward Dask approach, ``da.random.random`` then
  ``da.store`` into a zarr array, on a 3-worker LocalCluster like the gateway's.
- gateway: ``GET /submit_job/<id>`` over HTTP, end to end, one object per chunk.
- sharded: the same with the gateway's automatic Zarr 3 shards (one object for the default job's array).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import requests
import zarr
import zarr.storage
from distributed import Client
from zarr.core.chunk_key_encodings import ChunkKeyEncodingParams
from zarr.core.sync import sync

from science_gateway import results_objects
from science_gateway.results_store import RECORDS_PREFIX

Shape = tuple[int, int]


class JobFailed(RuntimeError):
    """One job of a workload did not produce its result."""


# The gateway's chunk keys (zarr 3's default encoding with "." separators), in the array's prefix.
CHUNK_KEY_ENCODING: ChunkKeyEncodingParams = {"name": "default", "separator": "."}


def chunk_keys(shape: Sequence[int], chunks: Sequence[int]) -> list[str]:
    grid = [math.ceil(size / step) for size, step in zip(shape, chunks, strict=True)]
    return [f"c.{row}.{column}" for row in range(grid[0]) for column in range(grid[1])]


def _object_bytes(key: str, size: int, rng: np.random.Generator) -> bytes:
    """``size`` bytes for an object: a JSON document for a ``.json`` key (a record, a metadata document), random bytes else."""
    if key.endswith(".json"):
        return b'{"pad":"' + b"x" * (size - 10) + b'"}' if size >= 10 else b"{}"[:size]
    return rng.bytes(size)


class ObstoreFloor:
    """A job's objects written straight to S3 from this process with obstore, the workers' client: no HTTP, no Dask.

    ``objects`` are the keys (``{job}`` stands for the job's id) and their sizes in bytes. Their bytes are made once,
    before any clock starts: the floor measures storage, not generation. Each object has bytes of its own, as in a
    real job: one buffer sent again and again would stay in the CPU's cache and make copying it cheaper. ``batch_size``
    PUTs are in flight at once.
    """

    def __init__(self, bucket: str, objects: Mapping[str, int], batch_size: int) -> None:
        self._store = results_objects.open_results(f"s3://{bucket}")
        self.batch_size = batch_size
        rng = np.random.default_rng(0)
        self.objects = [(key, _object_bytes(key, size, rng)) for key, size in objects.items()]

    @property
    def megabytes(self) -> float:
        return sum(len(data) for _, data in self.objects) / 1e6

    def run(self, job_id: str) -> None:
        slots = asyncio.Semaphore(self.batch_size)

        async def put(key: str, data: bytes) -> None:
            async with slots:
                await results_objects.put(self._store, floor_key(key, job_id), data)

        async def put_all() -> None:
            await asyncio.gather(*(put(key, data) for key, data in self.objects))

        sync(put_all())


def floor_key(key: str, job_id: str) -> str:
    """Where a floor writes a job's object: its key with the job's id, flattened into the bucket's top directory.

    rclone's server keeps objects as files, and writes that create one new
    directory at once fail or hang there and are retried (the gateway makes its
    array's directory with one write first): a floor in directories of its own
    had dozens of retried errors per run. A floor makes no directory at all.
    """
    return key.format(job=job_id).replace("/", "--")


def remove_floor_objects(bucket_dir: Path, job_id: str) -> None:
    """A floor job's objects, removed straight from the server's disk."""
    for path in bucket_dir.glob(f"{job_id}--*"):
        path.unlink()


def chunk_objects(shape: Shape, chunks: Shape) -> dict[str, int]:
    """A job's chunks as one object each, where the gateway puts them: ``<job>/data/c.<row>.<column>``."""
    return {f"{{job}}/data/{key}": chunks[0] * chunks[1] * 4 for key in chunk_keys(shape, chunks)}


def objects_left(results_dir: Path, job_id: str) -> dict[str, int]:
    """What a gateway job left in its results, read from the S3 server's disk: its objects under its place and its record.

    Keys name the job ``{job}``, as :class:`ObstoreFloor` takes them.
    """
    place = results_dir / job_id
    found = {f"{{job}}/{path.relative_to(place)}": path.stat().st_size for path in sorted(place.rglob("*")) if path.is_file()}
    records = list((results_dir / RECORDS_PREFIX).rglob(f"{job_id}.json"))
    if not found or len(records) != 1:
        raise JobFailed(f"{job_id}: {len(found)} objects and {len(records)} records in {results_dir}")
    found[f"{RECORDS_PREFIX}/{records[0].relative_to(results_dir / RECORDS_PREFIX).with_name('{job}.json')}"] = records[0].stat().st_size
    return found


class Baseline:
    """``da.random.random`` then ``da.store`` into a zarr array created on S3, on the given cluster."""

    def __init__(self, client: Client, bucket: str) -> None:
        self._client = client
        self._store = zarr.storage.FsspecStore.from_url(f"s3://{bucket}")

    def run(self, job_id: str, shape: Shape = (1000, 1000), chunks: Shape = (100, 100)) -> None:
        # The gateway's chunk keys: with zarr's default "/" the server's directory race hung this baseline.
        target = zarr.create_array(
            self._store, name=job_id, shape=shape, chunks=chunks, dtype="float32", chunk_key_encoding=CHUNK_KEY_ENCODING
        )
        data = da.random.random(shape, chunks=chunks).astype("float32")
        da.store(data, target, lock=False, scheduler=self._client)  # type: ignore[arg-type]  # dask's hints omit zarr arrays, which it writes


class Gateway:
    """``GET /submit_job/<id>`` against the gateway under gunicorn; a job that is not done is a failure.

    ``shards`` is the job's parameter: "none" (one object per chunk) or "auto".
    """

    def __init__(self, url: str, shards: str = "none", timeout: float = 900) -> None:
        self._url = url
        self.shards = shards
        self._timeout = timeout

    def run(self, job_id: str, shape: Shape = (1000, 1000), chunks: Shape = (100, 100)) -> None:
        params = {"shape": f"{shape[0]},{shape[1]}", "chunks": f"{chunks[0]},{chunks[1]}", "shards": self.shards}
        # A new connection per job, as a notebook's requests.get makes.
        response = requests.get(f"{self._url}/submit_job/{job_id}", params=params, timeout=self._timeout)
        if response.status_code != 200 or response.json().get("status") != "done":
            raise JobFailed(f"{job_id}: HTTP {response.status_code}: {response.text[:300]}")
