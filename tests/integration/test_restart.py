"""Job records outlive the gateway process: a crash mid-job, then a new process on the same store."""

import os
from pathlib import Path

import psutil
import requests

from conftest import BUCKET
from devtools.gunicorn_gateway import start_gunicorn_gateway
from devtools.local_s3 import LocalS3
from devtools.processes import stop_process
from helpers import assert_all_gone, gateways_cluster, pause_workers, reachable_cluster, wait_for, wait_for_the_tasks

PREFIX = f"{BUCKET}/restart"


def record(url: str, job_id: str) -> dict:
    return requests.get(f"{url}/jobs/{job_id}", timeout=10).json()


def lists_what_it_stored(s3: LocalS3, results_fs, prefix: str) -> bool:
    # The tests' S3 server can take up to a second to list an object whose writer was killed mid-request.
    stored = {path.relative_to(s3.data_dir).as_posix() for path in (s3.data_dir / prefix).rglob("*") if path.is_file()}
    results_fs.invalidate_cache()
    return set(results_fs.find(prefix)) == stored


def test_records_survive_a_crash_and_the_running_job_is_marked_failed(s3: LocalS3, results_fs, tmp_path: Path) -> None:
    environ = {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{PREFIX}", "GATEWAY_MAX_RUNNING_JOBS": "1"}
    first = start_gunicorn_gateway({**environ, **reachable_cluster(tmp_path)}, log_file=tmp_path / "first.log")
    try:
        assert requests.get(f"{first.url}/submit_job/finished-before?shape=10,10&chunks=10,10", timeout=60).status_code == 200
        with gateways_cluster(tmp_path) as cluster:
            # Paused for good: the crash comes while the job runs, its array begun and its tasks waiting.
            pause_workers(cluster)
            assert requests.post(f"{first.url}/jobs", json={"job_id": "cut-short"}, timeout=10).status_code == 202
            wait_for_the_tasks(cluster, "cut-short")
        assert results_fs.exists(f"{PREFIX}/cut-short/data/zarr.json"), "its array was begun"
        assert requests.post(f"{first.url}/jobs", json={"job_id": "still-queued", "shape": [10, 10], "chunks": [10, 10]}, timeout=10).status_code == 202
        assert record(first.url, "still-queued")["status"] == "queued"
    finally:
        # A crash: no shutdown code runs, in the gateway or its cluster.
        processes = [psutil.Process(first.process.pid), *psutil.Process(first.process.pid).children(recursive=True)]
        for process in processes:
            process.kill()
        assert_all_gone(processes, timeout=30)
    wait_for(lambda: lists_what_it_stored(s3, results_fs, PREFIX), 10, "the S3 server to list every object it stored")

    second = start_gunicorn_gateway(environ, log_file=tmp_path / "second.log")
    try:
        listed = {job["job_id"]: job for job in requests.get(f"{second.url}/jobs", timeout=10).json()["jobs"]}
        assert set(listed) == {"finished-before", "cut-short", "still-queued"}
        assert listed["finished-before"]["status"] == "done"
        assert listed["cut-short"]["status"] == "failed"
        assert listed["cut-short"]["error"]["code"] == "interrupted"
        assert "submit it again" in listed["cut-short"]["error"]["message"]
        assert not results_fs.exists(f"{PREFIX}/cut-short"), "the interrupted job's partial array is removed"

        queued = wait_for(lambda: (job := record(second.url, "still-queued"))["status"] == "done" and job, 60, "the queued job to run")
        assert queued["progress"] == {"chunks_written": 1, "chunks_total": 1}
        again = requests.post(f"{second.url}/jobs", json={"job_id": "cut-short", "shape": [10, 10], "chunks": [10, 10]}, timeout=10)
        assert again.status_code == 202, "a failed id may be submitted again"
    finally:
        stop_process(second.process, timeout=60)
