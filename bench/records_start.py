"""The records row: a gateway's start-up reading 100,000 stored job records, its time and memory.

The records are written with obstore (the fastest client here) as the gateway
writes them: done jobs of 100 owners, each at GATEWAY_MAX_RECORDS_PER_OWNER's
default of 1000. The reading is what a start-up does before the gateway is
ready (``RecordKeeper.load``), in a fresh process whose peak RSS is reported
beside its RSS before reading, so the row is the records' own cost. The floor
is obstore listing and fetching the same objects from one process.

``python -m bench.records_start`` runs the row alone on a server of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import obstore
from zarr.core.sync import sync

from devtools.local_s3 import start_local_s3
from science_gateway import results_objects
from science_gateway.apps.base import Output
from science_gateway.job_records import DONE, JobRecord
from science_gateway.job_work import FIRST_APP, FIRST_APP_VERSION, JobWork
from science_gateway.results_store import RECORDS_PREFIX, ResultsStore, place_for

OWNERS, RECORDS_PER_OWNER = 100, 1000
# PUTs in flight while the records are written: not measured, only made fast.
IN_FLIGHT = 64

# Run in a fresh process: what a start-up costs, with nothing else in its memory.
_LOAD = """
import json, resource, sys, time
import psutil
from science_gateway.apps.registry import load_apps
from science_gateway.job_table import JobTable
from science_gateway.metrics import GatewayMetrics
from science_gateway.record_keeping import RecordKeeper
from science_gateway.results_store import ResultsStore

apps = load_apps()
table = JobTable()
keeper = RecordKeeper(table, ResultsStore(sys.argv[1]), GatewayMetrics(running=lambda: 0, queued=lambda: 0, workers=lambda: 0), apps, "bench")
before = psutil.Process().memory_info().rss
started = time.monotonic()
keeper.load()
seconds = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
after = psutil.Process().memory_info().rss
print(json.dumps({"records": len(table.records), "seconds": seconds, "rss_before_mb": before / 1e6, "rss_after_mb": after / 1e6, "peak_rss_mb": peak / 1e6}))
"""


def write_records(url: str, owners: int, per_owner: int) -> int:
    """``owners`` x ``per_owner`` done random-array records under ``url``'s records prefix; their bytes."""
    store = ResultsStore(url)
    work = JobWork(FIRST_APP, FIRST_APP_VERSION, {"seed": 1, "shape": [1000, 1000], "chunks": [100, 100], "shards": None, "dtype": "float32"},
                   Output((1000, 1000), (100, 100), "float32", None))  # fmt: skip
    objects = {}
    for owner_index in range(owners):
        owner = f"user-{owner_index:03d}"
        for index in range(per_owner):
            job_id = f"run-{index}"
            place = place_for(job_id, owner)
            record = JobRecord(job_id, work, store.url_for(place), owner=owner, place=place, status=DONE,
                               started_at="2026-12-01T00:00:01+00:00", finished_at="2026-12-01T00:00:02+00:00", seconds=1.0,
                               chunks_written=100, ttl=604800, expires_at="2026-12-08T00:00:02+00:00")  # fmt: skip
            objects[f"{RECORDS_PREFIX}/{record.record_name}"] = json.dumps(record.to_stored(), sort_keys=True).encode()
    target = results_objects.open_results(url)
    names = list(objects)
    for start in range(0, len(names), IN_FLIGHT * 16):
        results_objects.put_all(target, {name: objects[name] for name in names[start : start + IN_FLIGHT * 16]})
    return sum(map(len, objects.values()))


def floor_seconds(url: str) -> float:
    """obstore listing the records and fetching each, IN_FLIGHT at a time, from one process."""
    store = results_objects.open_results(url)

    async def fetch_all(keys: list[str]) -> None:
        semaphore = asyncio.Semaphore(IN_FLIGHT)

        async def fetch(key: str) -> None:
            async with semaphore:
                await (await obstore.get_async(store, key)).bytes_async()

        await asyncio.gather(*(fetch(key) for key in keys))

    started = time.monotonic()
    keys = [item["path"] for batch in obstore.list(store, prefix=f"{RECORDS_PREFIX}/") for item in batch]
    sync(fetch_all(keys))
    return time.monotonic() - started


def measure_start(url: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _LOAD, url], capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_records(url: str, owners: int = OWNERS, per_owner: int = RECORDS_PER_OWNER) -> dict:
    stored_bytes = write_records(url, owners, per_owner)
    start = measure_start(url)
    return {**start, "stored_megabytes": stored_bytes / 1e6, "floor_seconds": floor_seconds(url)}


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="records-start-"))
    s3 = start_local_s3(workdir / "s3", ("records",), access_key="records-access", secret_key="records-secret", log_file=workdir / "s3.log")
    try:
        os.environ.update(s3.environ())
        print(json.dumps(measure_records("s3://records", *map(int, sys.argv[1:3])) if len(sys.argv) > 2 else measure_records("s3://records")))
    finally:
        s3.stop()


if __name__ == "__main__":
    main()
