"""``make bench``: start the local stack, measure floor, baseline and gateway side by side, report.

Everything runs in one go on this machine: an rclone S3 server, a 3-worker
LocalCluster for the baseline, and the gateway under gunicorn with its own
3-worker LocalCluster, as ``make run`` starts it. Ratios between the three,
measured in interleaved rounds, are what the targets are about; the machine is
shared, so absolute times are only context.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import dask.config
import psutil
from distributed import Client, LocalCluster

from bench import worker_cpu
from bench.coarsen_row import measure_coarsen
from bench.measure import PeakMemory, Run, count_requests, rss_megabytes, run_jobs
from bench.records_start import OWNERS, RECORDS_PER_OWNER, measure_records
from bench.report import write_report
from bench.result_reads import measure_reads
from bench.workloads import Baseline, Floor, Gateway, ObstoreFloor, Shape
from bench.workshop import PREVIOUS_DESIGN_ENVIRON, run_workshop
from devtools.gunicorn_gateway import PROJECT, RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import start_local_s3
from devtools.processes import stop_process
from science_gateway.apps.base import Output
from science_gateway.apps.layout import auto_shards
from science_gateway.cluster import WORKER_MALLOC_ENVIRON

# The S3 buckets: one per way of writing; the gateway's sharded jobs share its bucket, the obstore floor the floor's.
BUCKETS = ("floor", "baseline", "gateway", "records")
BATCH_SIZES = (8, 16, 32, 64, 128)
# The room measured before the workshop work: 40 callers of 6000x6000 jobs made 9 of 53 probes fail.
WORKSHOP_CALLERS, WORKSHOP_SHAPE, WORKSHOP_CHUNKS = 40, (6000, 6000), (1000, 1000)
# A room of people each running the README's cell at once: the default job, waited on, no second try.
ROOM_CALLERS = 200
# A result read whole through http_url and straight from S3, in turns, this many times each.
READ_SHAPE, READ_CHUNKS, READ_SAMPLES = (10000, 10000), (1000, 1000), 3
# coarsen of a source of this size and chunks (the gateway's default shards), by this factor, this many times.
COARSEN_SHAPE, COARSEN_CHUNKS, COARSEN_FACTOR, COARSEN_SAMPLES = (10000, 10000), (1000, 1000), 10, 3
LARGE_JOBS = [((4000, 4000), (100, 100)), ((4000, 4000), (1000, 1000)), ((10000, 10000), (100, 100)), ((10000, 10000), (1000, 1000))]
# Also written sharded (the gateway's "auto"), against a floor of the same bytes in the same objects.
SHARDED_LARGE_JOBS = [((10000, 10000), (100, 100))]
# Written by each store implementation on the baseline's cluster, for the workers' CPU per GB.
WORKER_CPU_JOBS = [
    Output(shape=(10000, 10000), chunks=(1000, 1000), dtype="float32"),
    Output(shape=(10000, 10000), chunks=(100, 100), dtype="float32", shards=auto_shards((10000, 10000), (100, 100), itemsize=4)),
]


def job_ids(prefix: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{index}" for index in range(count)]


def best_batch_size(floor: Floor, jobs: int) -> tuple[int, dict[int, float]]:
    """A floor's concurrency (requests in flight) with the lowest median job time."""
    medians: dict[int, float] = {}
    for size in BATCH_SIZES:
        floor.batch_size = size
        medians[size] = run_jobs("floor", floor.run, job_ids(f"batch{size}", jobs), 1).percentile(50)
    best = min(medians, key=lambda size: medians[size])
    floor.batch_size = best
    return best, medians


def interleaved(
    workloads: Mapping[str, Callable[..., None]], concurrency: int, jobs: int, rounds: int, server_log: Path
) -> dict[str, Run]:
    """``jobs`` jobs of each workload in each of ``rounds`` rounds, the workloads taking turns."""
    runs = {name: Run(name, concurrency) for name in workloads}
    for round_index in range(rounds):
        for name, run_job in workloads.items():
            runs[name].add(run_jobs(name, run_job, job_ids(f"c{concurrency}r{round_index}", jobs), concurrency, server_log))
            print(f"  {name:8} concurrency {concurrency} round {round_index + 1}/{rounds}: p50 {runs[name].percentile(50):.3f} s", flush=True)
    return runs


def machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        "unknown CPU",
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few jobs, no large jobs: a smoke run, not a measurement")
    parser.add_argument("--output-dir", type=Path, default=PROJECT / "bench" / "results")
    parser.add_argument("--readme", type=Path, default=PROJECT / "docs" / "contributing.md", help="the document whose performance section to update")
    args = parser.parse_args()
    jobs_c1, jobs_c8, rounds, memory_jobs = (4, 8, 1, 40) if args.quick else (10, 16, 3, 500)

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    s3_log = workdir / "s3.log"
    s3 = start_local_s3(
        workdir / "s3", BUCKETS, access_key="bench-access-key", secret_key="bench-secret-key",
        log_file=s3_log, remote_control=True,
    )  # fmt: skip
    os.environ.update(s3.environ())
    # The gateway's LocalCluster, but for the job code: same workers, threads and allocator settings.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_MALLOC_ENVIRON}):
        cluster = LocalCluster(n_workers=3, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
    client = Client(cluster)
    served = start_gunicorn_gateway({**os.environ, "GATEWAY_RESULTS_URL": "s3://gateway"}, log_file=workdir / "gateway.log")
    try:
        gateway_pid = psutil.Process(served.process.pid).children()[0].pid
        floor, baseline, gateway = Floor("floor", BATCH_SIZES[0]), Baseline(client, "baseline"), Gateway(served.url)
        obstore_floor = ObstoreFloor("floor", BATCH_SIZES[0])
        sharded = Gateway(served.url, shards="auto")
        workloads = {
            "floor": floor.run, "floor-obstore": obstore_floor.run, "baseline": baseline.run, "gateway": gateway.run, "sharded": sharded.run,
        }  # fmt: skip
        results: dict = {"machine": machine()}

        print("warming up", flush=True)
        for name, run_job in workloads.items():
            run_jobs(name, run_job, job_ids("warm", 5), 1)
        results["floor_batch_size"] = {}
        for name, each in (("floor", floor), ("floor-obstore", obstore_floor)):
            batch_size, batch_medians = best_batch_size(each, 3 if args.quick else 7)
            results["floor_batch_size"][name] = {"chosen": batch_size, "p50_seconds": batch_medians}
            print(f"{name}: {batch_size} requests in flight ({batch_medians})", flush=True)

        memory_start = rss_megabytes(gateway_pid)
        runs = [
            *interleaved(workloads, 1, jobs_c1, rounds, s3_log).values(),
            *interleaved(workloads, 8, jobs_c8, rounds, s3_log).values(),
        ]
        results["runs"] = [run.to_json() for run in runs]
        results["gateway_memory_mb"] = {"before": memory_start, "after": rss_megabytes(gateway_pid)}

        print("counting S3 requests", flush=True)
        results["requests_per_job"] = {
            name: count_requests(s3, s3_log, run_job, job_ids(f"count-{name}", 5)) for name, run_job in workloads.items()
        }

        results["large_jobs"] = [] if args.quick else large_jobs(floor, gateway, sharded, workdir / "s3")

        print("workers' CPU per GB stored, by store", flush=True)
        results["worker_cpu"] = []
        for spec in [Output(shape=(2000, 2000), chunks=(500, 500), dtype="float32")] if args.quick else WORKER_CPU_JOBS:
            results["worker_cpu"] += worker_cpu.measure(
                client, "baseline", 1, spec, job_ids("cpu", 1)[0], lambda prefix: shutil.rmtree(workdir / "s3" / "baseline" / prefix)
            )

        print(f"memory: {memory_jobs} gateway jobs at concurrency 8", flush=True)
        before = rss_megabytes(gateway_pid)
        soak = run_jobs("gateway", gateway.run, job_ids("memory", memory_jobs), 8)
        results["memory_run"] = {
            "jobs": soak.jobs,
            "failures": soak.failures,
            "rss_mb_before": before,
            "rss_mb_after": rss_megabytes(gateway_pid),
        }

        results["workshop"] = workshop(served, workdir, quick=args.quick)
        results["room"] = room(served, gateway_pid, workdir, quick=args.quick)
        print("reading a result through http_url and straight from S3", flush=True)
        shape = (2000, 2000) if args.quick else READ_SHAPE
        results["reads"] = measure_reads(served.url, gateway_pid, job_ids("read", 1)[0], shape, READ_CHUNKS, 1 if args.quick else READ_SAMPLES).to_json()
        print("coarsen of a large result, and its floor", flush=True)
        shape = (2000, 2000) if args.quick else COARSEN_SHAPE
        results["coarsen"] = measure_coarsen(
            served.url, "gateway", job_ids("coarsen", 1)[0], shape, COARSEN_CHUNKS, COARSEN_FACTOR, 1 if args.quick else COARSEN_SAMPLES
        ).to_json()
        owners, per_owner = (2, 100) if args.quick else (OWNERS, RECORDS_PER_OWNER)
        print(f"a start-up reading {owners * per_owner} job records, and its floor", flush=True)
        results["records"] = measure_records("s3://records", owners, per_owner)
    finally:
        stop_process(served.process, timeout=120)
        client.close()
        cluster.close()
        s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    met = write_report(results, args.output_dir, None if args.quick else args.readme, quick=args.quick)
    return 0 if met else 1


def workshop(served: RunningGateway, workdir: Path, quick: bool) -> list[dict]:
    """The same room of callers on a stand-in for the design before admission control and the probe port, then on today's."""
    callers, shape, chunks = (6, (1000, 1000), (100, 100)) if quick else (WORKSHOP_CALLERS, WORKSHOP_SHAPE, WORKSHOP_CHUNKS)
    print(f"workshop: {callers} callers at once, {shape[0]}x{shape[1]} jobs in {chunks[0]}x{chunks[1]} chunks", flush=True)
    # Its records apart from today's gateway's: on this store (rclone, no conditional writes) one gateway holds a records prefix.
    previous = start_gunicorn_gateway(
        {**os.environ, "GATEWAY_RESULTS_URL": "s3://gateway/previous-design", **PREVIOUS_DESIGN_ENVIRON}, log_file=workdir / "previous-design.log"
    )
    # The previous design had no probe port: the kubelet probed the main one.
    rooms = [("previous design", previous.url, previous.url), ("today", served.url, served.probe_url)]
    runs = []
    try:
        for design, url, probe_url in rooms:
            ids = job_ids("workshop", callers)
            run = run_workshop(design, url, probe_url, ids, shape, chunks).to_json()
            runs.append(run)
            for job_id in ids:
                for results in (workdir / "s3" / "gateway", workdir / "s3" / "gateway" / "previous-design"):
                    shutil.rmtree(results / job_id, ignore_errors=True)
            print(
                f"  {design}: {run['jobs_done']} done, {run['refusals']} refusals, {run['jobs_per_second']:.2f} jobs/s, "
                f"{run['probes']} probes, p99 {run['probe_p99_seconds']:.3f} s, {run['probe_failures']} failed",
                flush=True,
            )
    finally:
        stop_process(previous.process, timeout=120)
    return runs


def room(served: RunningGateway, gateway_pid: int, workdir: Path, quick: bool) -> dict:
    """The README's cell by a room of callers at once, on today's gateway, as written: a 429 is a failure, not a retry.

    The gateway's memory and CPU while the room waits are what a waiting caller costs: a request thread blocked on its job's event.
    """
    callers = 20 if quick else ROOM_CALLERS
    print(f"room: {callers} callers at once, each waiting on the default job", flush=True)
    ids = job_ids("room", callers)
    gateway = psutil.Process(gateway_pid)
    rss_before, cpu_before = rss_megabytes(gateway_pid), sum(gateway.cpu_times()[:2])
    memory = PeakMemory(gateway)
    run = run_workshop("room", served.url, served.probe_url, ids, (1000, 1000), (100, 100), try_again=False).to_json()
    run |= {"rss_mb_before": rss_before, "rss_mb_peak": memory.stop(), "cpu_seconds": sum(gateway.cpu_times()[:2]) - cpu_before}
    for job_id in ids:
        shutil.rmtree(workdir / "s3" / "gateway" / job_id, ignore_errors=True)
    print(f"  {run['jobs_done']} of {callers} done, the last after {run['wall_seconds']:.1f} s; probe p99 {run['probe_p99_seconds']:.3f} s", flush=True)
    return run


def large_jobs(floor: Floor, gateway: Gateway, sharded: Gateway, data_dir: Path) -> list[dict]:
    """Each large job twice by the floor and by the gateway; the objects are removed after each.

    For a sharded job the floor writes the same bytes in as many objects: one per shard.
    """
    cases: list[tuple[Shape, Shape, Shape | None]] = [(shape, chunks, None) for shape, chunks in LARGE_JOBS]
    for shape, chunks in SHARDED_LARGE_JOBS:
        rows, columns = auto_shards(shape, chunks, itemsize=4)
        cases.append((shape, chunks, (rows, columns)))
    measured = []
    for (shape, chunks, shards), name in itertools.product(cases, ("floor", "gateway")):
        objects = shards or chunks
        bucket = name if name == "floor" else "gateway"
        if name == "floor":
            floor.run(f"large-unmeasured-{shape[0]}-{objects[0]}", shape, objects)  # makes its bytes outside the clock
            run_job = functools.partial(floor.run, shape=shape, chunks=objects)
        else:
            run_job = functools.partial((sharded if shards else gateway).run, shape=shape, chunks=chunks)
        run = Run(name, 1)
        for job_id in job_ids(f"large-{shape[0]}-{objects[0]}", 2):
            run.add(run_jobs(name, run_job, [job_id], 1))
            # Straight from the server's disk: deleting thousands of objects over S3 would take longer than writing them.
            shutil.rmtree(data_dir / bucket / job_id, ignore_errors=True)
        megabytes = shape[0] * shape[1] * 4 / 1e6
        measured.append({
            "workload": name, "shape": list(shape), "chunks": list(chunks), "shards": list(shards) if shards else None,
            "megabytes": megabytes, "seconds": run.latencies, "failures": run.failures,
            "megabytes_per_second": megabytes / run.percentile(50) if run.latencies else 0.0,
        })  # fmt: skip
        print(f"  {name:8} {shape} chunks {chunks} shards {shards}: {measured[-1]['megabytes_per_second']:.0f} MB/s", flush=True)
    return measured


if __name__ == "__main__":
    sys.exit(main())
