"""Where the workers' CPU goes when they store a large job: generation, checksums, the S3 client.

The job's own task (``random_chunks.write_random_region``) runs on the
benchmark's LocalCluster with its target array bound to each store
implementation in turn, and the worker processes' CPU seconds (user + system,
from /proc) are read around each run:

- generation: the same chunks made and thrown away, nothing stored;
- fsspec: zarr's ``FsspecStore`` over s3fs (what the gateway uses);
- fsspec without checksums: the same, with botocore's request checksums off
  (``request_checksum_calculation=when_required``);
- obstore: zarr's ``ObjectStore`` over obstore's ``S3Store`` (Rust's object_store).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import zarr
import zarr.storage
from distributed import Client, wait
from zarr.core.sync import sync

from random_array_job import MAX_TASK_BYTES, RandomArraySpec
from random_chunks import chunks_in, random_chunk, task_regions, write_random_region

STORES = ("generation", "fsspec", "fsspec without checksums", "obstore")


def _generate_only(region: Any, *, seed: int, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str) -> int:
    return sum(random_chunk(seed, index, selection, dtype).size for index, selection in chunks_in(region, shape, chunks))


def _store(kind: str, bucket: str) -> zarr.abc.store.Store:
    # As the gateway makes it (results_store.py): each worker keeps one S3 client per store.
    if kind == "fsspec":
        return zarr.storage.FsspecStore.from_url(f"s3://{bucket}")
    if kind == "fsspec without checksums":
        options = {"config_kwargs": {"request_checksum_calculation": "when_required"}}
        return zarr.storage.FsspecStore.from_url(f"s3://{bucket}", storage_options=options)
    from obstore.store import S3Store

    s3 = S3Store(
        bucket,
        endpoint=os.environ["AWS_ENDPOINT_URL"],
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        client_options={"allow_http": True},
    )
    return zarr.storage.ObjectStore(s3)


def _touch(store: zarr.abc.store.Store) -> bool:
    return sync(store.exists("warm-up"))


def _warm_up(client: Client, store: zarr.abc.store.Store) -> None:
    """Make each worker's S3 client before the clock starts, in the thread its tasks run in, as a busy gateway's workers have theirs."""
    wait([client.submit(_touch, store, workers=[address], pure=False) for address in client.scheduler_info()["workers"]])


def _workers_cpu_seconds(client: Client) -> float:
    pids = client.run(os.getpid).values()
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def measure(client: Client, bucket: str, spec: RandomArraySpec, job_id: str, on_done: Callable[[str], None]) -> list[dict]:
    """Each store in turn writes ``spec``'s array under ``<job_id>-<n>``; CPU seconds per GB and MB/s of each.

    ``on_done`` is given each result's key prefix, to remove it.
    """
    regions = task_regions(spec.shape, spec.write_unit, max(3, spec.nbytes // MAX_TASK_BYTES))
    measured = []
    for index, kind in enumerate(STORES):
        prefix = f"{job_id}-{index}"
        if kind == "generation":
            tasks = client.map(_generate_only, regions, seed=spec.seed, shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype, pure=False)
        else:
            store = _store(kind, bucket)
            _warm_up(client, store)
            target = zarr.create_array(
                store, name=f"{prefix}/data", shape=spec.shape, chunks=spec.chunks,
                shards=spec.shards, dtype=spec.dtype, compressors=None, chunk_key_encoding={"name": "default", "separator": "."},
                config={"write_empty_chunks": True},
            )  # fmt: skip
            tasks = client.map(write_random_region, regions, run_id=prefix, target=target, seed=spec.seed, dtype=spec.dtype, pure=False)
        before, started = _workers_cpu_seconds(client), time.perf_counter()
        wait(tasks)
        seconds, cpu = time.perf_counter() - started, _workers_cpu_seconds(client) - before
        complete = all(future.status == "finished" for future in tasks)
        if kind != "generation":
            complete = complete and _first_chunk_matches(bucket, spec, prefix)
            on_done(prefix)
        gigabytes = spec.nbytes / 1e9
        measured.append({
            "store": kind, "shape": list(spec.shape), "chunks": list(spec.chunks), "shards": list(spec.shards) if spec.shards else None,
            "cpu_seconds_per_gb": cpu / gigabytes, "megabytes_per_second": spec.nbytes / 1e6 / seconds, "complete": complete,
        })  # fmt: skip
        print(f"  {kind:26} {cpu / gigabytes:6.1f} CPU s/GB, {spec.nbytes / 1e6 / seconds:6.0f} MB/s", flush=True)
    return measured


def _first_chunk_matches(bucket: str, spec: RandomArraySpec, prefix: str) -> bool:
    """Whether what a store wrote reads back, through the gateway's own store, as the seed makes it."""
    array = zarr.open_array(zarr.storage.FsspecStore.from_url(f"s3://{bucket}/{prefix}/data"), mode="r")
    first = tuple(slice(0, step) for step in spec.chunks)
    return bool(np.array_equal(array[first], random_chunk(spec.seed, 0, first, spec.dtype)))
