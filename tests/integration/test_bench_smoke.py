"""`make bench` in its quick form: the stack starts, every workload runs, and the gateway's S3 requests are counted.

Timings are the benchmark's business, never a test's: this checks what it does,
and the two targets that are counts, not times.
"""

import json
import subprocess
import sys
from pathlib import Path

from devtools.gunicorn_gateway import PROJECT
from science_gateway.metrics import JOB_PHASES


def test_a_quick_benchmark_runs_every_workload_without_a_failed_job(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output-dir", str(tmp_path)],
        cwd=PROJECT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    ran = {(run["workload"], run["concurrency"]) for run in results["runs"] if run["jobs"] > 0}
    workloads = ("floor", "floor-sharded", "baseline", "gateway", "sharded")
    assert ran == {(name, concurrency) for name in workloads for concurrency in (1, 8)}
    assert all(not run["failures"] for run in results["runs"])
    assert results["requests_per_job"]["floor"] >= 101, "the floor writes 100 chunks and the job's record"
    sharded_objects = results["default_job_objects"]["sharded"]
    assert any(key.startswith(".jobs/") for key in sharded_objects), "the sharded floor writes the job's record too"
    assert results["requests_per_job"]["floor-sharded"] >= len(sharded_objects), "and every object a sharded job leaves"
    assert results["requests_per_job"]["gateway"] <= 110
    assert results["requests_per_job"]["sharded"] <= 8, "the default job sharded: one object for its array"
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
    stores = {row["store"] for row in results["worker_cpu"] if row["complete"]}
    assert stores == {"generation", "obstore", "fsspec", "fsspec without checksums"}, "every store's objects read back"
    assert "| gateway | 8 |" in completed.stdout
    rooms = {room["design"]: room for room in results["workshop"]}
    assert set(rooms) == {"previous design", "today"}
    assert all(room["jobs_done"] == room["callers"] == 6 and room["probes"] > 0 for room in rooms.values()), rooms
    assert "| today | 6 of 6 |" in completed.stdout
    assert all(each["jobs"] > 0 and each["gateway_cpu_seconds"] > 0 for each in results["cpu"]["per_default_job"].values())
    scale = results["scale"]
    assert not scale["failures"] and scale["megabytes_per_second"] > 0, scale
    assert len(scale["workers"]) == 3 and scale["worker_memory_limit_mb"] > 0, "each worker's peak memory and its limit"
    # The default job's time by phase, from the gateway's own histograms, with what is left to HTTP.
    assert list(results["phases"]["phases"]) == ["http", *JOB_PHASES] and results["phases"]["jobs"] == 5
    assert "Where the default job's time goes" in completed.stdout
