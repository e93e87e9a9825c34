"""Load through gunicorn: many default jobs from 16 clients at once, every array checked, memory watched.

``make test`` runs 300 jobs; ``make soak`` runs many more (``LOAD_JOBS``).
"""

import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3
from helpers import assert_made_from_its_seed, expected_objects

PREFIX = f"{BUCKET}/load"
JOBS = int(os.environ.get("LOAD_JOBS", "300"))
CLIENTS = 16
# Jobs run before the first memory reading, so that it is taken with every pool and cache warm.
WARM_UP = 32
# The gateway process's growth over the run must stay under this: a leak of
# 200 KB a job would show as 60 MB at 300 jobs. (The benchmark measured +7 MB
# over 500 jobs.)
MAX_GROWTH_MB = 50


@pytest.fixture(scope="module")
def loaded(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from serve_for_module(tmp_path_factory, "load", f"s3://{PREFIX}")


def gateway_rss_mb(gateway: RunningGateway) -> float:
    """Resident memory of gunicorn's worker, the process that serves the requests and holds the cluster client."""
    [worker] = [child for child in psutil.Process(gateway.process.pid).children() if "gunicorn" in " ".join(child.cmdline())]
    return worker.memory_info().rss / 2**20


def run_jobs(gateway: RunningGateway, job_ids: list[str]) -> list[requests.Response]:
    def submit(job_id: str) -> requests.Response:
        # One session a thread: requests' sessions are not thread-safe.
        with requests.Session() as session:
            return session.get(f"{gateway.url}/submit_job/{job_id}?seed={seed_of(job_id)}", timeout=600)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(submit, job_ids))


def seed_of(job_id: str) -> int:
    return int(job_id.rsplit("-", 1)[1])


def test_jobs_from_sixteen_clients_all_complete_and_memory_stays_bounded(loaded: RunningGateway, results_fs, measured) -> None:
    run = secrets.token_hex(3)
    warm_up = run_jobs(loaded, [f"warm-{run}-{n}" for n in range(WARM_UP)])
    assert [response.status_code for response in warm_up] == [200] * WARM_UP
    before = gateway_rss_mb(loaded)

    job_ids = [f"load-{run}-{n}" for n in range(JOBS)]
    responses = run_jobs(loaded, job_ids)

    after = gateway_rss_mb(loaded)
    failures = [
        (job_id, response.status_code, response.text[:200]) for job_id, response in zip(job_ids, responses, strict=True) if response.status_code != 200
    ]
    assert not failures, f"{len(failures)} of {JOBS} jobs failed, the first: {failures[0]}"
    assert all(response.json()["status"] == "done" for response in responses)

    chunk_counts: dict[str, int] = {}
    marked_complete = set()
    for path in results_fs.find(PREFIX):
        job_id, _, name = path.removeprefix(f"{PREFIX}/").partition("/")
        if name.startswith("data/c."):
            chunk_counts[job_id] = chunk_counts.get(job_id, 0) + 1
        elif name == "zarr.json":
            marked_complete.add(job_id)
    assert [chunk_counts.get(job_id, 0) for job_id in job_ids] == [expected_objects(response.json()) for response in responses], (
        "every array has all its chunks (or shards)"
    )
    assert marked_complete.issuperset(job_ids), "every array has its completion marker"
    for job_id in job_ids[:: max(1, JOBS // 20)]:
        assert_made_from_its_seed(f"s3://{PREFIX}/{job_id}", seed_of(job_id))

    growth = after - before
    measured(f"load: {JOBS} jobs from {CLIENTS} clients, 0 failed; gateway memory {before:.1f} -> {after:.1f} MB ({growth:+.1f} MB)")
    assert growth < MAX_GROWTH_MB
