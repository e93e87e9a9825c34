"""The three ways of making one job's result that the benchmark compares.

- floor: the job's objects (the array metadata, then the chunks as bytes,
  concurrently) written straight to S3 from this process, with no Dask and no
  HTTP: what the S3 server and its client library allow, with s3fs.
- floor-obstore: the same objects written with obstore, the workers' S3 client.
- baseline: the straightforward Dask approach, ``da.random.random`` then
  ``da.store`` into a zarr array, on a 3-worker LocalCluster like the gateway's.
- gateway: ``GET /submit_job/<id>`` over HTTP, end to end, one object per chunk.
- sharded: the same with the gateway's automatic Zarr 3 shards (one object for the default job).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence

import dask.array as da
import numpy as np
import requests
import s3fs
import zarr
import zarr.storage
from distributed import Client
from zarr.core.chunk_key_encodings import ChunkKeyEncodingParams
from zarr.core.sync import sync

from science_gateway import results_objects

Shape = tuple[int, int]


class JobFailed(RuntimeError):
    """One job of a workload did not produce its result."""


# The gateway's chunk keys (zarr 3's default encoding with "." separators), in the array's prefix.
CHUNK_KEY_ENCODING: ChunkKeyEncodingParams = {"name": "default", "separator": "."}


def chunk_keys(shape: Sequence[int], chunks: Sequence[int]) -> list[str]:
    grid = [math.ceil(size / step) for size, step in zip(shape, chunks, strict=True)]
    return [f"c.{row}.{column}" for row in range(grid[0]) for column in range(grid[1])]


class Floor:
    """Writes a job's objects with one concurrent s3fs call: ``batch_size`` requests in flight."""

    def __init__(self, bucket: str, batch_size: int) -> None:
        self._fs = s3fs.S3FileSystem(skip_instance_cache=True)
        self._bucket = bucket
        self.batch_size = batch_size
        self._chunks_of: tuple[Shape, Shape] | None = None
        self._chunks: dict[str, bytes] = {}

    def _chunk_bytes(self, shape: Shape, chunks: Shape) -> dict[str, bytes]:
        """Random bytes for every chunk, made before the clock starts: the floor measures storage, not generation.

        Each chunk has bytes of its own, as in a real job: one buffer sent again and
        again would stay in the CPU's cache and make copying and hashing it cheaper.
        """
        if self._chunks_of != (shape, chunks):
            rng = np.random.default_rng(0)
            self._chunks = {key: rng.random(chunks, dtype=np.float32).tobytes() for key in chunk_keys(shape, chunks)}
            self._chunks_of = (shape, chunks)
        return self._chunks

    @staticmethod
    def _metadata(shape: Shape) -> bytes:
        return json.dumps({"zarr_format": 3, "node_type": "array", "shape": list(shape)}).encode()

    def run(self, job_id: str, shape: Shape = (1000, 1000), chunks: Shape = (100, 100)) -> None:
        objects = self._chunk_bytes(shape, chunks)
        prefix = f"{self._bucket}/{job_id}/data"
        # In the gateway's order: the metadata, then the chunks into the prefix it made.
        self._fs.pipe(f"{prefix}/zarr.json", self._metadata(shape))
        self._fs.pipe({f"{prefix}/{key}": data for key, data in objects.items()}, batch_size=self.batch_size)


class ObstoreFloor(Floor):
    """The same objects in the same order, written with obstore, the client the gateway's workers write with."""

    def __init__(self, bucket: str, batch_size: int) -> None:
        super().__init__(bucket, batch_size)
        self._store = results_objects.open_results(f"s3://{bucket}")

    def run(self, job_id: str, shape: Shape = (1000, 1000), chunks: Shape = (100, 100)) -> None:
        objects = self._chunk_bytes(shape, chunks)
        prefix = f"{job_id}/data"
        sync(results_objects.put(self._store, f"{prefix}/zarr.json", self._metadata(shape)))
        slots = asyncio.Semaphore(self.batch_size)

        async def put(key: str, data: bytes) -> None:
            async with slots:
                await results_objects.put(self._store, f"{prefix}/{key}", data)

        async def put_all() -> None:
            await asyncio.gather(*(put(key, data) for key, data in objects.items()))

        sync(put_all())


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

    def __init__(self, url: str, shards: str = "none") -> None:
        self._url = url
        self.shards = shards

    def run(self, job_id: str, shape: Shape = (1000, 1000), chunks: Shape = (100, 100)) -> None:
        params = {"shape": f"{shape[0]},{shape[1]}", "chunks": f"{chunks[0]},{chunks[1]}", "shards": self.shards}
        # A new connection per job, as a notebook's requests.get makes.
        response = requests.get(f"{self._url}/submit_job/{job_id}", params=params, timeout=900)
        if response.status_code != 200 or response.json().get("status") != "done":
            raise JobFailed(f"{job_id}: HTTP {response.status_code}: {response.text[:300]}")
