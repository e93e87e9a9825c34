"""The read row: one large result read whole with zarr, through the gateway's ``http_url`` and straight from S3.

The same client (zarr-python over fsspec: its HTTP filesystem, or s3fs) reads
the same array in turns, so that the ratio of their MB/s is the cost of going
through the gateway. Meanwhile the gateway process's memory is sampled: it
streams each object a block at a time and must stay flat however large the read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import requests
import zarr

from bench.measure import PeakMemory


@dataclass
class ReadRun:
    shape: tuple[int, int]
    chunks: tuple[int, int]
    shards: tuple[int, int] | None
    megabytes: float
    # Seconds of each read, by way of reading.
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"http": [], "s3": []})
    # The gateway's resident memory before the reads, and the most it had during those through it.
    rss_mb_before: float = 0.0
    rss_mb_peak: float = 0.0
    failures: list[str] = field(default_factory=list)

    def megabytes_per_second(self, way: str) -> float:
        return self.megabytes / float(np.median(self.seconds[way])) if self.seconds[way] else 0.0

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape), "chunks": list(self.chunks), "shards": list(self.shards) if self.shards else None,
            "megabytes": self.megabytes, "seconds": self.seconds, "failures": self.failures,
            "http_megabytes_per_second": self.megabytes_per_second("http"), "s3_megabytes_per_second": self.megabytes_per_second("s3"),
            "rss_mb_before": self.rss_mb_before, "rss_mb_peak": self.rss_mb_peak,
        }  # fmt: skip


def measure_reads(gateway_url: str, gateway_pid: int, job_id: str, shape: tuple[int, int], chunks: tuple[int, int], samples: int) -> ReadRun:
    """Make the job, then read it ``samples`` times each way, in turns."""
    params = {"shape": f"{shape[0]},{shape[1]}", "chunks": f"{chunks[0]},{chunks[1]}"}
    job = requests.get(f"{gateway_url}/submit_job/{job_id}", params=params, timeout=900).json()
    if job.get("status") != "done":
        raise RuntimeError(f"the job to read was not made: {job}")
    run = ReadRun(shape, chunks, tuple(job["shards"]) if job["shards"] else None, shape[0] * shape[1] * 4 / 1e6)
    gateway = psutil.Process(gateway_pid)
    ways = (("http", job["http_url"]), ("s3", job["url"]))
    # Warm, outside the clock: the first read through the gateway makes its store client and request threads (about 50 MB, once).
    for way, url in ways:
        _read(run, way, url)
    run.rss_mb_before = run.rss_mb_peak = gateway.memory_info().rss / 2**20
    for _ in range(samples):
        for way, url in ways:
            sampling = PeakMemory(gateway) if way == "http" else None
            started = time.perf_counter()
            read = _read(run, way, url)
            if sampling is not None:
                run.rss_mb_peak = max(run.rss_mb_peak, sampling.stop())
            if read:
                run.seconds[way].append(time.perf_counter() - started)
    return run


def _read(run: ReadRun, way: str, url: str) -> bool:
    """The whole array at ``url`` read with zarr; a failure is recorded in the run."""
    try:
        values = np.asarray(zarr.open_array(f"{url}/data", mode="r")[:])
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the benchmark
        run.failures.append(f"{way}: {type(exc).__name__}: {exc}"[:500])
        return False
    if values.shape != run.shape:
        run.failures.append(f"{way}: read {values.shape}, not {run.shape}")
        return False
    return True
