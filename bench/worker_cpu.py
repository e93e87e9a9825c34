"""Where the workers' CPU goes when they store a large job: generation, checksums, the S3 client.

The job's own task (``region_writes.write_region`` of the ``random-array`` app) runs on the
benchmark's LocalCluster with its target array bound to each store
implementation in turn, and the worker processes' CPU seconds (user + system,
from /proc) are read around each run:

- generation: the same chunks made and thrown away, nothing stored;
- obstore: the job's task as the gateway runs it, obstore's ``S3Store`` (Rust's object_store);
- fsspec: the same objects through zarr's ``FsspecStore`` over s3fs (the gateway's own client);
- fsspec without checksums: the same, with botocore's request checksums off
  (``request_checksum_calculation=when_required``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import zarr
import zarr.storage
from distributed import Client, Future, wait
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from science_gateway import results_objects
from science_gateway.apps.base import Output
from science_gateway.apps.random_array import RandomArray, random_chunk
from science_gateway.region_writes import (
    MAX_TASK_BYTES,
    AppTask,
    ArrayTarget,
    chunks_in,
    region_objects,
    store_all_or_none_pending,
    task_regions,
    write_region,
)

STORES = ("generation", "obstore", "fsspec", "fsspec without checksums")
# botocore's request checksums off: the only difference of the second fsspec store.
WITHOUT_CHECKSUMS = {"config_kwargs": {"request_checksum_calculation": "when_required"}}


def _generate_only(region: Any, *, seed: int, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str) -> int:
    return sum(random_chunk(seed, index, selection, dtype).size for index, selection in chunks_in(region, shape, chunks))


def _fsspec_store(bucket: str, options: dict) -> zarr.storage.FsspecStore:
    return zarr.storage.FsspecStore.from_url(f"s3://{bucket}", storage_options=options)


def _task(seed: int, spec: Output) -> AppTask:
    """The task of a random-array job, as the gateway sends it."""
    return AppTask(RandomArray.name, RandomArray.version, f"{RandomArray.__module__}:{RandomArray.__qualname__}", {"seed": seed}, spec, {})


def _write_with_fsspec(region: Any, *, target: ArrayTarget, seed: int, store: zarr.storage.FsspecStore) -> int:
    """The job's objects, computed and encoded as the gateway's task does, written through zarr's fsspec store."""
    prototype = default_buffer_prototype().buffer
    spec = Output(target.shape, target.chunks, target.dtype.name, target.shards)
    objects = region_objects(region, RandomArray().compute(region, {"seed": seed}, spec, {}), target)
    sync(store_all_or_none_pending([functools.partial(store.set, key, prototype.from_bytes(data)) for key, data in objects]))
    return len(objects)


def _touch(store: Store) -> bool:
    return sync(store.exists("warm-up"))


def _touch_obstore(results_url: str) -> None:
    sync(results_objects.put(results_objects.open_results(results_url), "warm-up", b""))


def _warm_up(client: Client, touch: Callable[[], Any]) -> None:
    """Make each worker's S3 client before the clock starts, in the thread its tasks run in, as a busy gateway's workers have theirs."""
    wait([client.submit(touch, workers=[address], pure=False) for address in client.scheduler_info()["workers"]])


def _workers_cpu_seconds(client: Client) -> float:
    pids = client.run(os.getpid).values()
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def measure(client: Client, bucket: str, seed: int, spec: Output, job_id: str, on_done: Callable[[str], None]) -> list[dict]:
    """Each store in turn writes the random array of ``seed`` and ``spec`` under ``<job_id>-<n>``; CPU seconds per GB and MB/s of each.

    ``on_done`` is given each result's key prefix, to remove it.
    """
    regions = task_regions(spec.shape, spec.write_unit, max(3, spec.nbytes // MAX_TASK_BYTES))
    measured = []
    for index, kind in enumerate(STORES):
        prefix = f"{job_id}-{index}"
        tasks: list[Future]
        if kind == "generation":
            tasks = client.map(_generate_only, regions, seed=seed, shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype, pure=False)
        else:
            store = _fsspec_store(bucket, WITHOUT_CHECKSUMS if kind == "fsspec without checksums" else {})
            array = zarr.create_array(
                store, name=f"{prefix}/data", shape=spec.shape, chunks=spec.chunks, shards=spec.shards, dtype=spec.dtype,
                compressors=None, chunk_key_encoding={"name": "default", "separator": "."},
            )  # fmt: skip
            target = ArrayTarget(f"s3://{bucket}", f"{prefix}/data", array.metadata)
            if kind == "obstore":
                _warm_up(client, functools.partial(_touch_obstore, target.results_url))
                tasks = client.map(write_region, regions, run_id=prefix, target=target, task=_task(seed, spec), pure=False)
            else:
                _warm_up(client, functools.partial(_touch, store))
                tasks = client.map(_write_with_fsspec, regions, target=target, seed=seed, store=store, pure=False)
        before, started = _workers_cpu_seconds(client), time.perf_counter()
        wait(tasks)
        seconds, cpu = time.perf_counter() - started, _workers_cpu_seconds(client) - before
        complete = all(future.status == "finished" for future in tasks)
        if kind != "generation":
            complete = complete and _first_chunk_matches(bucket, seed, spec, prefix)
            on_done(prefix)
        gigabytes = spec.nbytes / 1e9
        measured.append({
            "store": kind, "shape": list(spec.shape), "chunks": list(spec.chunks), "shards": list(spec.shards) if spec.shards else None,
            "cpu_seconds_per_gb": cpu / gigabytes, "megabytes_per_second": spec.nbytes / 1e6 / seconds, "complete": complete,
        })  # fmt: skip
        print(f"  {kind:26} {cpu / gigabytes:6.1f} CPU s/GB, {spec.nbytes / 1e6 / seconds:6.0f} MB/s", flush=True)
    return measured


def _first_chunk_matches(bucket: str, seed: int, spec: Output, prefix: str) -> bool:
    """Whether what a store wrote reads back, through the gateway's own store, as the seed makes it."""
    array = zarr.open_array(zarr.storage.FsspecStore.from_url(f"s3://{bucket}/{prefix}/data"), mode="r")
    first = tuple(slice(0, step) for step in spec.chunks)
    return bool(np.array_equal(array[first], random_chunk(seed, 0, first, spec.dtype)))
