"""``make bench``: start the local stack, measure the floors, the baseline and the gateway side by side, report.

Everything runs in one go on this machine: an rclone S3 server, a 3-worker
LocalCluster for the baseline, and the gateway under gunicorn with its own
3-worker LocalCluster, as ``make run`` starts it. Ratios between the gateway and
its floors (the same objects written with obstore from this process, measured in
the same run, in interleaved rounds) are what the targets are about; the machine
is shared, so absolute times are only context.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import dask.config
import psutil
from distributed import Client, LocalCluster
from distributed.worker_memory import parse_memory_limit

from bench import worker_cpu
from bench.coarsen_row import measure_coarsen
from bench.measure import PeakMemory, PeakTreeMemory, ProcessCpu, Run, count_requests, is_dask_worker, rss_megabytes, run_jobs
from bench.phases import breakdown_table, measure_phases
from bench.records_start import OWNERS, RECORDS_PER_OWNER, measure_records
from bench.report import write_report
from bench.result_reads import measure_reads
from bench.workloads import Baseline, Gateway, ObstoreFloor, Shape, chunk_objects, objects_left, remove_floor_objects
from bench.workshop import PREVIOUS_DESIGN_ENVIRON, run_workshop
from devtools.gunicorn_gateway import PROJECT, RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import start_local_s3
from devtools.processes import stop_process
from science_gateway.apps.base import Output
from science_gateway.apps.layout import auto_shards
from science_gateway.cluster import WORKER_MALLOC_ENVIRON
from science_gateway.results_store import RECORDS_PREFIX
from science_gateway.settings import load_settings

# The S3 buckets: one per way of writing; the gateway's sharded jobs share its bucket, every floor the floor's.
BUCKETS = ("floor", "baseline", "gateway", "records")
# Requests in flight tried for the default job's floor (128: all 101 at once), and for the large floor's 100 PUTs.
BATCH_SIZES = (8, 16, 32, 64, 128)
LARGE_BATCH_SIZES = (4, 8, 16, 32, 100)
DEFAULT_SHAPE, DEFAULT_CHUNKS = (1000, 1000), (100, 100)
# Whose CPU is read around their runs: the gateway's own workloads.
GATEWAY_WORKLOADS = ("gateway", "sharded")
# The room measured before the workshop work: 40 callers of 6000x6000 jobs made 9 of 53 probes fail.
WORKSHOP_CALLERS, WORKSHOP_SHAPE, WORKSHOP_CHUNKS = 40, (6000, 6000), (1000, 1000)
# A room of people each running the README's cell at once: the default job, waited on, no second try.
ROOM_CALLERS = 200
# A result read whole through http_url and straight from S3, in turns, this many times each.
READ_SHAPE, READ_CHUNKS, READ_SAMPLES = (10000, 10000), (1000, 1000), 3
# coarsen of a source of this size and chunks (the gateway's default shards), by this factor, this many times.
COARSEN_SHAPE, COARSEN_CHUNKS, COARSEN_FACTOR, COARSEN_SAMPLES = (10000, 10000), (1000, 1000), 10, 3
# Large jobs (shape, chunks, the job's shards parameter), each against floor-large: 100 PUTs of 4 MB, the same 400 MB.
LARGE_JOBS: list[tuple[Shape, Shape, str]] = [
    ((10000, 10000), (1000, 1000), "none"),
    ((10000, 10000), (1000, 1000), "auto"),
    ((10000, 10000), (100, 100), "auto"),
]
LARGE_SAMPLES = 5
LARGE_FLOOR_OBJECTS = chunk_objects((10000, 10000), (1000, 1000))
# Default jobs, one at a time, whose phases are averaged (gateway_job_phase_seconds).
PHASE_JOBS = 30
# The scale run: 6.4 GB from one job on a gateway whose GATEWAY_MAX_ELEMENTS allows it; --quick a small stand-in.
SCALE_SHAPE, QUICK_SCALE_SHAPE, SCALE_CHUNKS = (40000, 40000), (4000, 4000), (1000, 1000)
SCALE_TIMEOUT = 1800
# Written by each store implementation on the baseline's cluster, for the workers' CPU per GB.
WORKER_CPU_JOBS = [
    Output(shape=(10000, 10000), chunks=(1000, 1000), dtype="float32"),
    Output(shape=(10000, 10000), chunks=(100, 100), dtype="float32", shards=auto_shards((10000, 10000), (100, 100), itemsize=4)),
]


def job_ids(prefix: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{index}" for index in range(count)]


def best_batch_size(
    floor: ObstoreFloor, sizes: Sequence[int], jobs: int, cleanup: Callable[[str], None] | None = None
) -> tuple[int, dict[int, float]]:
    """A floor's concurrency (requests in flight) with the lowest median job time: its best MB/s, its bytes being fixed.

    The sizes take turns, one job each, so that a slow moment of the shared machine is not one size's alone.
    """
    runs = {size: Run("floor", 1) for size in sizes}
    for round_index in range(jobs):
        for size in sizes:
            floor.batch_size = size
            job_id = job_ids(f"batch{size}r{round_index}", 1)[0]
            runs[size].add(run_jobs("floor", floor.run, [job_id], 1))
            if cleanup:
                cleanup(job_id)
    medians = {size: run.percentile(50) for size, run in runs.items()}
    best = min(medians, key=lambda size: medians[size])
    floor.batch_size = best
    return best, medians


def interleaved(
    workloads: Mapping[str, Callable[..., None]], concurrency: int, jobs: int, rounds: int, server_log: Path, cpu: ProcessCpu
) -> tuple[dict[str, Run], dict[str, dict]]:
    """``jobs`` jobs of each workload in each of ``rounds`` rounds, the workloads taking turns.

    Also the gateway's CPU seconds and its workers', read around the gateway's own runs only.
    """
    runs = {name: Run(name, concurrency) for name in workloads}
    spent = {name: {"jobs": 0, "gateway_cpu_seconds": 0.0, "workers_cpu_seconds": 0.0} for name in GATEWAY_WORKLOADS if name in workloads}
    for round_index in range(rounds):
        for name, run_job in workloads.items():
            before = cpu.read()
            run = run_jobs(name, run_job, job_ids(f"c{concurrency}r{round_index}", jobs), concurrency, server_log)
            if name in spent:
                gateway_seconds, workers_seconds = ProcessCpu.spent(before, cpu.read())
                spent[name]["jobs"] += len(run.latencies)
                spent[name]["gateway_cpu_seconds"] += gateway_seconds
                spent[name]["workers_cpu_seconds"] += workers_seconds
            runs[name].add(run)
            print(f"  {name:13} concurrency {concurrency} round {round_index + 1}/{rounds}: p50 {runs[name].percentile(50):.3f} s", flush=True)
    return runs, spent


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
    parser.add_argument("--phases", action="store_true", help="only where the default job's time goes, by phase, printed; nothing written")
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
    data_dir = workdir / "s3"
    try:
        gateway_pid = psutil.Process(served.process.pid).children()[0].pid
        cpu = ProcessCpu(gateway_pid)
        baseline, gateway, sharded = Baseline(client, "baseline"), Gateway(served.url), Gateway(served.url, shards="auto")
        results: dict = {"machine": machine()}

        # The floors write what the gateway's default job leaves: listed from the server's disk after one job of each kind.
        print("the default job's objects, as the gateway leaves them", flush=True)
        left = {}
        for name, each in (("gateway", gateway), ("sharded", sharded)):
            job_id = job_ids(f"{name[0]}lay", 1)[0]  # as long as the measured jobs' ids: the record holds it
            each.run(job_id)
            left[name] = objects_left(data_dir / "gateway", job_id)
        results["default_job_objects"] = left
        record = {key: size for key, size in left["gateway"].items() if key.startswith(f"{RECORDS_PREFIX}/")}
        floor = ObstoreFloor("floor", {**chunk_objects(DEFAULT_SHAPE, DEFAULT_CHUNKS), **record}, BATCH_SIZES[0])
        # All at once: a handful of objects.
        floor_sharded = ObstoreFloor("floor", left["sharded"], len(left["sharded"]))
        for name, objects in left.items():
            print(f"  {name}: {len(objects)} objects, {sum(objects.values())} bytes: {sorted(objects.values(), reverse=True)[:4]}...", flush=True)
        workloads = {
            "floor": floor.run, "floor-sharded": floor_sharded.run, "baseline": baseline.run, "gateway": gateway.run, "sharded": sharded.run,
        }  # fmt: skip

        print("warming up", flush=True)
        for name, run_job in workloads.items():
            run_jobs(name, run_job, job_ids("warm", 5), 1)
        if args.phases:
            print(breakdown_table(measure_phases(served.url, gateway.run, job_ids("phases", PHASE_JOBS))))
            return 0
        batch_size, batch_medians = best_batch_size(floor, BATCH_SIZES, 3 if args.quick else 7)
        results["floor_batch_size"] = {
            "floor": {"chosen": batch_size, "p50_seconds": batch_medians},
            "floor-sharded": {"chosen": floor_sharded.batch_size, "p50_seconds": {}},
        }
        print(f"floor: {batch_size} requests in flight ({batch_medians}); floor-sharded: all {floor_sharded.batch_size} at once", flush=True)

        memory_start = rss_megabytes(gateway_pid)
        runs_1, cpu_1 = interleaved(workloads, 1, jobs_c1, rounds, s3_log, cpu)
        runs_8, _ = interleaved(workloads, 8, jobs_c8, rounds, s3_log, cpu)
        results["runs"] = [run.to_json() for run in [*runs_1.values(), *runs_8.values()]]
        results["gateway_memory_mb"] = {"before": memory_start, "after": rss_megabytes(gateway_pid)}
        results["cpu"] = {"per_default_job": cpu_1}

        print("counting S3 requests", flush=True)
        results["requests_per_job"] = {
            name: count_requests(s3, s3_log, run_job, job_ids(f"count-{name}", 5)) for name, run_job in workloads.items()
        }

        print("where the default job's time goes", flush=True)
        try:
            results["phases"] = measure_phases(served.url, gateway.run, job_ids("phases", 5 if args.quick else PHASE_JOBS))
        except Exception as exc:  # noqa: BLE001 - a failed job here is reported with the others, not the end of the run
            results["phases"] = {"failure": f"{type(exc).__name__}: {exc}"[:500]}

        if not args.quick:
            results["large_jobs"], results["cpu"]["per_gb"], results["floor_batch_size"]["floor-large"] = large_jobs(served.url, cpu, data_dir)
        else:
            results["large_jobs"], results["cpu"]["per_gb"] = [], {}

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
        results["scale"] = scale(workdir, quick=args.quick)
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


def large_jobs(url: str, cpu: ProcessCpu, data_dir: Path) -> tuple[list[dict], dict, dict]:
    """Each large job LARGE_SAMPLES times, each sample beside one of floor-large, the two taking turns.

    Returns each job's and its floor's samples, the gateway's CPU seconds per GB over its large jobs, and the floor's
    tuning. The objects are removed after each sample.
    """
    floor = ObstoreFloor("floor", LARGE_FLOOR_OBJECTS, LARGE_BATCH_SIZES[0])

    def remove(bucket: str, job_id: str) -> None:
        # Straight from the server's disk: deleting thousands of objects over S3 would take longer than writing them.
        if bucket == "floor":
            remove_floor_objects(data_dir / bucket, job_id)
        shutil.rmtree(data_dir / bucket / job_id, ignore_errors=True)

    print(f"floor-large: {len(LARGE_FLOOR_OBJECTS)} PUTs of 4 MB, requests in flight tried {LARGE_BATCH_SIZES}", flush=True)
    batch_size, medians = best_batch_size(floor, LARGE_BATCH_SIZES, 3, functools.partial(remove, "floor"))
    print(f"  floor-large: {batch_size} requests in flight ({medians})", flush=True)
    runs = {(case, name): Run(name, 1) for case in LARGE_JOBS for name in ("floor-large", "gateway")}
    spent = {"gigabytes": 0.0, "gateway_cpu_seconds": 0.0, "workers_cpu_seconds": 0.0}
    for sample in range(LARGE_SAMPLES):
        for case in LARGE_JOBS:
            shape, chunks, shards = case
            name = f"large-{shape[0]}-{chunks[0]}-{shards}-{sample}"
            floor_id, gateway_id = job_ids(f"floor-{name}", 1)[0], job_ids(name, 1)[0]
            runs[case, "floor-large"].add(run_jobs("floor-large", floor.run, [floor_id], 1))
            remove("floor", floor_id)
            before = cpu.read()
            run = run_jobs("gateway", functools.partial(Gateway(url, shards).run, shape=shape, chunks=chunks), [gateway_id], 1)
            if run.latencies:
                gateway_seconds, workers_seconds = ProcessCpu.spent(before, cpu.read())
                spent["gigabytes"] += shape[0] * shape[1] * 4 / 1e9
                spent["gateway_cpu_seconds"] += gateway_seconds
                spent["workers_cpu_seconds"] += workers_seconds
            runs[case, "gateway"].add(run)
            remove("gateway", gateway_id)
        print(f"  large jobs: sample {sample + 1}/{LARGE_SAMPLES}", flush=True)
    measured = []
    for (shape, chunks, shards), name in runs:
        run = runs[(shape, chunks, shards), name]
        megabytes = floor.megabytes if name == "floor-large" else shape[0] * shape[1] * 4 / 1e6
        measured.append({
            "workload": name, "shape": list(shape), "chunks": list(chunks), "shards": shards, "megabytes": megabytes,
            "seconds": run.latencies, "failures": run.failures,
            "min_seconds": run.percentile(0), "median_seconds": run.percentile(50), "max_seconds": run.percentile(100),
            "megabytes_per_second": megabytes / run.percentile(50) if run.latencies else 0.0,
        })  # fmt: skip
        print(
            f"  {name:11} {shape} chunks {chunks} shards {shards}: {run.percentile(0):.2f} / {run.percentile(50):.2f} / "
            f"{run.percentile(100):.2f} s, {measured[-1]['megabytes_per_second']:.0f} MB/s",
            flush=True,
        )
    return measured, spent, {"chosen": batch_size, "p50_seconds": medians}


def scale(workdir: Path, quick: bool) -> dict:
    """One job of 6.4 GB (--quick: 64 MB) on a gateway of its own whose size limit allows it: its time, and everyone's memory.

    The workers' memory limit is LocalCluster's own: the gateway passes none (science_gateway/cluster.py), so each of its
    n workers of one thread gets distributed's ``parse_memory_limit("auto", 1, n)``, this machine's memory over n.
    """
    shape = QUICK_SCALE_SHAPE if quick else SCALE_SHAPE
    environ = {
        **os.environ,
        # Its records apart from the bench's gateway's: on this store one gateway holds a records prefix.
        "GATEWAY_RESULTS_URL": "s3://gateway/scale",
        "GATEWAY_MAX_ELEMENTS": str(max(shape[0] * shape[1], load_settings({}).max_elements)),
        "GATEWAY_JOB_TIMEOUT": str(SCALE_TIMEOUT),
    }
    settings = load_settings(environ)
    limit_mb = (parse_memory_limit("auto", 1, settings.n_workers, logger=logging.getLogger(__name__)) or 0) / 2**20
    megabytes = shape[0] * shape[1] * 4 / 1e6
    print(f"scale: {shape[0]}x{shape[1]} float32 ({megabytes / 1000:.1f} GB) in {SCALE_CHUNKS[0]}x{SCALE_CHUNKS[1]} chunks", flush=True)
    served = start_gunicorn_gateway(environ, log_file=workdir / "scale.log")
    job_id = job_ids("scale", 1)[0]
    try:
        gateway_pid = psutil.Process(served.process.pid).children()[0].pid
        gateway = Gateway(served.url, shards="auto", timeout=SCALE_TIMEOUT + 60)
        gateway.run(job_ids("scale-warm", 1)[0])  # the workers' first job is not the measured one
        workers = [process for process in psutil.Process(gateway_pid).children(recursive=True) if is_dask_worker(process)]
        workers_before = {process.pid: process.memory_info().rss / 2**20 for process in workers}
        rss_before, cpu = rss_megabytes(gateway_pid), ProcessCpu(gateway_pid)
        cpu_before, memory, worker_memory = cpu.read(), PeakMemory(psutil.Process(gateway_pid)), PeakTreeMemory(gateway_pid)
        run = run_jobs("scale", functools.partial(gateway.run, shape=shape, chunks=SCALE_CHUNKS), [job_id], 1)
        rss_peak, worker_peaks = memory.stop(), worker_memory.stop()
        gateway_seconds, workers_seconds = ProcessCpu.spent(cpu_before, cpu.read())
    finally:
        stop_process(served.process, timeout=120)
        shutil.rmtree(workdir / "s3" / "gateway" / "scale" / job_id, ignore_errors=True)
    seconds = run.latencies[0] if run.latencies else float("nan")
    found = {
        "shape": list(shape), "chunks": list(SCALE_CHUNKS), "shards": "auto", "megabytes": megabytes,
        "max_elements": int(environ["GATEWAY_MAX_ELEMENTS"]), "seconds": seconds,
        "megabytes_per_second": megabytes / seconds if run.latencies else 0.0, "failures": run.failures,
        "rss_mb_before": rss_before, "rss_mb_peak": rss_peak,
        "gateway_cpu_seconds": gateway_seconds, "workers_cpu_seconds": workers_seconds,
        "workers": [{"pid": pid, "rss_mb_before": workers_before.get(pid), "rss_mb_peak": peak} for pid, peak in sorted(worker_peaks.items())],
        "worker_memory_limit_mb": limit_mb,
        "worker_memory_limit_from": f'distributed.worker_memory.parse_memory_limit("auto", 1, {settings.n_workers}), as LocalCluster sets it '
        f"for {settings.n_workers} workers when the gateway passes no memory_limit",
    }  # fmt: skip
    print(
        f"  {seconds:.1f} s, {found['megabytes_per_second']:.0f} MB/s; gateway {rss_before:.0f} MB before, at most {rss_peak:.0f} MB; "
        f"workers at most {', '.join(f'{peak:.0f}' for peak in worker_peaks.values())} MB of {limit_mb:.0f} MB each",
        flush=True,
    )
    return found


if __name__ == "__main__":
    sys.exit(main())
