"""The coarsen row: block means of a large result, by the gateway's workers, beside a floor of the same reads and writes.

The gateway runs ``coarsen`` on a 10000x10000 source: its workers read every
object of the source from S3 and write the coarse result. The floor makes the
same requests from one process with obstore (the fastest client here): a GET
of each object of the source and a PUT of each object the result has, of the
same sizes, IN_FLIGHT at a time. Both are reported as the MB read plus written
per second, the gateway's from its POST until the job is done; medians of the
samples, taken in turns.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import obstore
import requests
from obstore.store import ObjectStore
from zarr.core.sync import sync

from science_gateway import results_objects

# The floor's requests in flight: objects of megabytes gain nothing from more on this S3 server.
IN_FLIGHT = 16


@dataclass
class CoarsenRun:
    shape: list[int]
    chunks: list[int]
    shards: list[int] | None
    factor: int
    megabytes: float = 0.0
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"gateway": [], "floor": []})
    failures: list[str] = field(default_factory=list)

    def megabytes_per_second(self, way: str) -> float:
        return self.megabytes / float(np.median(self.seconds[way])) if self.seconds[way] else 0.0

    def to_json(self) -> dict:
        return {
            "shape": self.shape, "chunks": self.chunks, "shards": self.shards, "factor": self.factor,
            "megabytes": self.megabytes, "seconds": self.seconds, "failures": self.failures,
            "gateway_megabytes_per_second": self.megabytes_per_second("gateway"),
            "floor_megabytes_per_second": self.megabytes_per_second("floor"),
        }  # fmt: skip


def measure_coarsen(gateway_url: str, bucket: str, job_id: str, shape: tuple[int, int], chunks: tuple[int, int], factor: int, samples: int) -> CoarsenRun:
    """Make the source, then coarsen it ``samples`` times through the gateway and by the floor, in turns."""
    params = {"shape": f"{shape[0]},{shape[1]}", "chunks": f"{chunks[0]},{chunks[1]}"}
    source = requests.get(f"{gateway_url}/submit_job/{job_id}", params=params, timeout=900).json()
    if source.get("status") != "done":
        raise RuntimeError(f"the source to coarsen was not made: {source}")
    run = CoarsenRun(source["shape"], source["chunks"], source["shards"], factor)
    store = results_objects.open_results(f"s3://{bucket}")
    read = _objects(store, source["url"].removeprefix(f"s3://{bucket}/"))
    for sample in range(samples):
        coarse_id = f"{job_id}-coarse-{sample}"
        coarse = _coarsen(run, gateway_url, source["job_id"], coarse_id)
        if coarse is None:
            continue
        written = _objects(store, coarse["url"].removeprefix(f"s3://{bucket}/"))
        run.megabytes = (sum(read.values()) + sum(written.values())) / 1e6
        started = time.perf_counter()
        try:
            sync(_floor(store, list(read), {f"floor-{coarse_id}/{key}": size for key, size in written.items()}))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the benchmark
            run.failures.append(f"floor: {type(exc).__name__}: {exc}"[:500])
        else:
            run.seconds["floor"].append(time.perf_counter() - started)
        requests.delete(f"{gateway_url}/jobs/{coarse_id}", timeout=60)
    return run


def _objects(store: ObjectStore, prefix: str) -> dict[str, int]:
    """The key and size of each object of the array under ``prefix``, its metadata left out."""
    listed = [item for batch in obstore.list(store, prefix=f"{prefix}/data/") for item in batch]
    return {item["path"]: item["size"] for item in listed if not item["path"].endswith("zarr.json")}


def _coarsen(run: CoarsenRun, gateway_url: str, source_id: str, job_id: str) -> dict | None:
    """The gateway's coarsen of the source, timed from its POST until it is done; its record, or None when it failed."""
    body: dict[str, Any] = {"app": "coarsen", "job_id": job_id, "parameters": {"source": source_id, "factor": run.factor}}
    started = time.perf_counter()
    answer = requests.post(f"{gateway_url}/jobs", json=body, timeout=60)
    record = answer.json()
    while answer.status_code == 202 and record.get("status") in ("queued", "running"):
        time.sleep(0.02)
        record = requests.get(f"{gateway_url}/jobs/{job_id}", timeout=60).json()
    seconds = time.perf_counter() - started
    if record.get("status") != "done":
        run.failures.append(f"gateway: {str(record)[:500]}")
        return None
    run.seconds["gateway"].append(seconds)
    return record


async def _floor(store: ObjectStore, reads: list[str], writes: dict[str, int]) -> None:
    """GET each of ``reads`` whole, then PUT each of ``writes`` with as many bytes, IN_FLIGHT requests at a time."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def get(key: str) -> None:
        async with slots:
            await (await obstore.get_async(store, key)).bytes_async()

    async def put(key: str, size: int) -> None:
        async with slots:
            await results_objects.put(store, key, bytes(size))

    await asyncio.gather(*(get(key) for key in reads))
    await asyncio.gather(*(put(key, size) for key, size in writes.items()))
