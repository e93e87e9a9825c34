"""The benchmark's table, its targets, the raw numbers as JSON, a chart, and the performance section of docs/contributing.md."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

README_START = "<!-- bench:start -->"
# The two floors: the job's objects written from one process with s3fs (the targets' reference) and with obstore.
FLOORS = ("floor", "floor-obstore")
README_END = "<!-- bench:end -->"
# The object a read sends is at most a block (object_reads.BLOCK_BYTES) in the gateway at once, per reader; ten readers at once.
READ_GROWTH_MB = 50
# A start-up's records must fit beside the gateway in its pod's 1 GiB (deploy_gateway.yaml) with room to spare.
RECORDS_GROWTH_MB = 400


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool

    def line(self) -> str:
        return f"- [{'x' if self.met else ' '}] {self.name}: {self.measured} ({'met' if self.met else 'MISSED'})"


def _run(results: dict, workload: str, concurrency: int) -> dict:
    return next(run for run in results["runs"] if run["workload"] == workload and run["concurrency"] == concurrency)


def targets(results: dict) -> list[Target]:
    floor_1, gateway_1, sharded_1 = (_run(results, name, 1) for name in ("floor", "gateway", "sharded"))
    floor_8, baseline_8, gateway_8 = (_run(results, name, 8) for name in ("floor", "baseline", "gateway"))
    latency_ratio = gateway_1["p50_seconds"] / floor_1["p50_seconds"]
    # The server's PUT capacity in jobs: the floor's best rate at either concurrency.
    floor_capacity = max(floor_1["jobs_per_second"], floor_8["jobs_per_second"])
    requests, sharded_requests = results["requests_per_job"]["gateway"], results["requests_per_job"]["sharded"]
    sharded_ratio = sharded_1["p50_seconds"] / floor_1["p50_seconds"]
    memory = results["memory_run"]
    growth = memory["rss_mb_after"] - memory["rss_mb_before"]
    found = [
        Target("single-job p50 latency, one object per chunk, <= 1.1x the floor", f"{latency_ratio:.2f}x", latency_ratio <= 1.1),
        Target("single-job p50 latency, sharded as one shard, <= 0.5x the floor of 100 PUTs", f"{sharded_ratio:.2f}x", sharded_ratio <= 0.5),
        Target(
            "throughput at concurrency 8 >= 3x the baseline",
            f"{gateway_8['jobs_per_second'] / baseline_8['jobs_per_second']:.2f}x",
            gateway_8["jobs_per_second"] >= 3 * baseline_8["jobs_per_second"],
        ),
        Target(
            "throughput at concurrency 8 >= 70 % of the floor's jobs/s",
            f"{100 * gateway_8['jobs_per_second'] / floor_capacity:.0f} %",
            gateway_8["jobs_per_second"] >= 0.7 * floor_capacity,
        ),
        Target("S3 requests per job <= 110", f"{requests:.1f}", requests <= 110),
        Target("S3 requests per job, sharded as one shard, <= 8", f"{sharded_requests:.1f}", sharded_requests <= 8),
    ]
    for large in _large_pairs(results):
        if large["shape"][0] == 10000:
            ratio, least = large["gateway"] / large["floor"], 0.9 if large["shards"] else 0.7
            found.append(Target(f"MB/s >= {100 * least:.0f} % of the floor's at {_size(large)}", f"{100 * ratio:.0f} %", ratio >= least))
    today = _workshop(results, "today")
    found.append(Target(
        f"workshop of {today['callers']} callers: every probe answered under 1 s",
        f"{today['probes_under_target']} of {today['probes']}, the slowest {today['probe_max_seconds']:.3f} s",
        today["probes_under_target"] == today["probes"] > 0,
    ))  # fmt: skip
    room = results["room"]
    found.append(Target(
        f"room of {room['callers']}: every caller's job done, no retry by hand, every probe under 1 s",
        f"{room['jobs_done']} done, the last after {room['wall_seconds']:.1f} s; probes {room['probes_under_target']} of {room['probes']} "
        f"under 1 s, p99 {room['probe_p99_seconds']:.3f} s",
        room["jobs_done"] == room["callers"] and room["probes_under_target"] == room["probes"] > 0,
    ))  # fmt: skip
    reads = results["reads"]
    ratio = reads["http_megabytes_per_second"] / reads["s3_megabytes_per_second"] if reads["s3_megabytes_per_second"] else 0.0
    read_growth = reads["rss_mb_peak"] - reads["rss_mb_before"]
    found += [
        Target(f"reading {_size(reads)} through http_url >= 70 % of the MB/s straight from S3, same client", f"{100 * ratio:.0f} %", ratio >= 0.7),
        Target(f"gateway memory flat while it serves that read: peak growth < {READ_GROWTH_MB} MB", f"{read_growth:+.1f} MB", read_growth < READ_GROWTH_MB),
        Target(f"gateway memory growth < 30 MB over {memory['jobs']} jobs", f"{growth:+.1f} MB", growth < 30 and memory["jobs"] >= 500),
        *records_targets(results["records"]),
        no_failed_job(results),
    ]
    return found


def records_targets(records: dict) -> list[Target]:
    ratio = records["seconds"] / records["floor_seconds"] if records["floor_seconds"] else float("inf")
    growth = records["peak_rss_mb"] - records["rss_before_mb"]
    return [
        Target(f"a start-up reads {records['records']} job records within 1.5x obstore's time to fetch them", f"{ratio:.2f}x", ratio <= 1.5),
        Target(f"and holds them in < {RECORDS_GROWTH_MB} MB more", f"{growth:+.0f} MB", growth < RECORDS_GROWTH_MB),
    ]


def no_failed_job(results: dict) -> Target:
    failures = sum(len(run["failures"]) for run in results["runs"]) + len(results["memory_run"]["failures"])
    failures += sum(len(large["failures"]) for large in results["large_jobs"])
    failures += sum(len(room["failures"]) for room in [*results["workshop"], results["room"]])
    failures += len(results["reads"]["failures"]) + len(results["coarsen"]["failures"])
    return Target("no failed job in any run", f"{failures} failed", failures == 0)


def _workshop(results: dict, design: str) -> dict:
    return next(room for room in results["workshop"] if room["design"] == design)


def _size(large: dict) -> str:
    size = f"{large['shape'][0]}x{large['shape'][1]} in {large['chunks'][0]}x{large['chunks'][1]} chunks"
    return size + (f", {large['shards'][0]}x{large['shards'][1]} shards" if large.get("shards") else "")


def _large_pairs(results: dict) -> list[dict]:
    pairs: dict[tuple, dict] = {}
    for large in results["large_jobs"]:
        shards = large.get("shards")
        key = (tuple(large["shape"]), tuple(large["chunks"]), tuple(shards or ()))
        pair = pairs.setdefault(key, {"shape": large["shape"], "chunks": large["chunks"], "shards": shards})
        pair[large["workload"]] = large["megabytes_per_second"]
    return list(pairs.values())


def table(results: dict) -> str:
    requests = results["requests_per_job"]
    lines = [
        "| workload | concurrency | jobs | p50 s | p95 s | jobs/s | p50 / floor | jobs/s / floor | S3 requests/job | S3 errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        floor = _run(results, "floor", run["concurrency"])
        lines.append(
            f"| {run['workload']} | {run['concurrency']} | {run['jobs']} | {run['p50_seconds']:.3f} | {run['p95_seconds']:.3f} "
            f"| {run['jobs_per_second']:.2f} | {run['p50_seconds'] / floor['p50_seconds']:.2f} "
            f"| {run['jobs_per_second'] / floor['jobs_per_second']:.2f} | {requests[run['workload']]:.1f} | {run['server_errors']} |"
        )
    if results["large_jobs"]:
        lines += ["", "| large job | floor MB/s | gateway MB/s | gateway / floor |", "|---|---:|---:|---:|"]
        lines += [
            f"| {_size(large)} | {large['floor']:.0f} | {large['gateway']:.0f} | {large['gateway'] / large['floor']:.2f} |"
            for large in _large_pairs(results)
        ]
    lines += [
        "",
        "Workers' CPU seconds per GB stored (user + system, all three workers), by store, on the baseline's cluster "
        "running the gateway's own task; generation makes the same chunks and stores nothing:",
        "",
        "| job | store | CPU s/GB | MB/s | read back |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {_size(row)} | {row['store']} | {row['cpu_seconds_per_gb']:.1f} | {row['megabytes_per_second']:.0f} "
        f"| {'yes' if row['complete'] else 'NO'} |"
        for row in results["worker_cpu"]
    ]
    rooms = results["workshop"]
    lines += [
        "",
        f"Workshop: {rooms[0]['callers']} callers at once, each waiting on a {rooms[0]['shape'][0]}x{rooms[0]['shape'][1]} "
        f"job and trying again after `Retry-After` when refused; `/healthz` and `/readyz` polled every 0.5 s (5 s timeout). "
        "The previous design is today's code with one pool of 16 request threads, no limit on waiting callers and the "
        "probes on the main port.",
        "",
        "| design | jobs done | 429 (tried again) | jobs/s | probes | probes under 1 s | probe p99 s | slowest probe s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {room['design']} | {room['jobs_done']} of {room['callers']} | {room['refusals']} | {room['jobs_per_second']:.2f} "
        f"| {room['probes']} | {room['probes_under_target']} | {room['probe_p99_seconds']:.3f} | {room['probe_max_seconds']:.3f} |"
        for room in rooms
    ]
    room, reads = results["room"], results["reads"]
    lines += [
        "",
        f"Room: {room['callers']} callers at once, each running the README's cell (a waiting `/submit_job` of the default job, "
        f"no second try): {room['jobs_done']} of {room['callers']} done, the last after {room['wall_seconds']:.1f} s; "
        f"{room['probes']} probes, p99 {room['probe_p99_seconds']:.3f} s, the slowest {room['probe_max_seconds']:.3f} s. "
        f"The gateway process: {room['rss_mb_before']:.0f} MB before, at most {room['rss_mb_peak']:.0f} MB while the room waited, "
        f"{room['cpu_seconds']:.1f} CPU s in all ({room['cpu_seconds'] / max(1, room['jobs_done']) * 1000:.0f} ms a job, its submission, "
        "wait and answer included).",
        "",
        f"Reading {_size(reads)} ({reads['megabytes']:.0f} MB) whole with zarr, in turns: through `http_url` "
        f"{reads['http_megabytes_per_second']:.0f} MB/s, straight from S3 {reads['s3_megabytes_per_second']:.0f} MB/s (medians of "
        f"{len(reads['seconds']['http'])}); the gateway process at {reads['rss_mb_before']:.0f} MB before and at most "
        f"{reads['rss_mb_peak']:.0f} MB while it served them.",
    ]
    coarsen = results["coarsen"]
    floor_rate = coarsen["floor_megabytes_per_second"]
    lines += [
        "",
        f"coarsen of {_size(coarsen)} by {coarsen['factor']} ({coarsen['megabytes']:.0f} MB read and written): through the gateway, "
        f"from its POST until done, {coarsen['gateway_megabytes_per_second']:.0f} MB/s; the floor of the same GETs and PUTs with obstore "
        f"from one process {floor_rate:.0f} MB/s ({coarsen['gateway_megabytes_per_second'] / floor_rate if floor_rate else 0:.2f}x; "
        f"medians of {len(coarsen['seconds']['gateway'])}).",
    ]
    records = results["records"]
    lines += [
        "",
        f"A start-up reading {records['records']} job records ({records['stored_megabytes']:.0f} MB, done jobs of 1000 per user): "
        f"{records['seconds']:.0f} s until the gateway could be ready, beside {records['floor_seconds']:.0f} s for obstore to list and fetch them "
        f"from one process; {records['rss_before_mb']:.0f} MB before, at most {records['peak_rss_mb']:.0f} MB, {records['rss_after_mb']:.0f} MB after.",
    ]
    memory, during_runs = results["memory_run"], results["gateway_memory_mb"]
    rates = [
        f"{_put_rate(results, name):.0f} PUT/s with {name} ({results['floor_batch_size'][name]['chosen']} requests in flight)"
        for name in FLOORS
    ]
    obstore_floor = _run(results, "floor-obstore", 1)["p50_seconds"]
    lines += [
        "",
        f"The S3 server's best PUT rate, by the floors: {' and '.join(rates)}. The targets are set against the floor "
        "written with s3fs; against the one written with obstore, the gateway's p50 at concurrency 1 is "
        f"{_run(results, 'gateway', 1)['p50_seconds'] / obstore_floor:.2f}x and the sharded default job's "
        f"{_run(results, 'sharded', 1)['p50_seconds'] / obstore_floor:.2f}x.",
        f"Gateway process memory: {during_runs['before']:.0f} MB before and {during_runs['after']:.0f} MB after the runs "
        f"above; {memory['rss_mb_before']:.0f} MB before and {memory['rss_mb_after']:.0f} MB after {memory['jobs']} more jobs "
        "at concurrency 8.",
    ]
    return "\n".join(lines)


def _put_rate(results: dict, floor: str) -> float:
    return max(_run(results, floor, concurrency)["jobs_per_second"] for concurrency in (1, 8)) * results["requests_per_job"][floor]


def chart(results: dict, path: Path) -> None:
    figure, (latency, throughput, bandwidth) = plt.subplots(1, 3, figsize=(15, 4.5))
    workloads = ["floor", "floor-obstore", "baseline", "gateway", "sharded"]
    colours = {"floor": "tab:grey", "floor-obstore": "tab:brown", "baseline": "tab:orange", "gateway": "tab:blue", "sharded": "tab:green"}
    for offset, concurrency in enumerate((1, 8)):
        runs = [_run(results, name, concurrency) for name in workloads]
        positions = [index * 3 + offset for index in range(len(workloads))]
        latency.bar(positions, [run["p50_seconds"] for run in runs], color=[colours[name] for name in workloads], alpha=0.5 + 0.5 * offset)
        throughput.bar(positions, [run["jobs_per_second"] for run in runs], color=[colours[name] for name in workloads], alpha=0.5 + 0.5 * offset)
    for axis, title in ((latency, "p50 latency per job (s)"), (throughput, "jobs per second")):
        axis.set_xticks([index * 3 + 0.5 for index in range(len(workloads))], workloads)
        axis.set_title(f"{title}\nlight: concurrency 1, dark: concurrency 8")
    pairs = _large_pairs(results)
    if pairs:
        labels = [_size(large).replace(" in ", "\n") for large in pairs]
        for offset, name in enumerate(("floor", "gateway")):
            bandwidth.bar([index * 3 + offset for index in range(len(pairs))], [large[name] for large in pairs], color=colours[name], label=name)
        bandwidth.set_xticks([index * 3 + 0.5 for index in range(len(pairs))], labels, fontsize=8)
        bandwidth.legend()
    bandwidth.set_title("large jobs: MB/s")
    figure.suptitle(f"science gateway benchmark, {results['machine']['cores']} cores, {results['finished_at'][:10]}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(results: dict, output_dir: Path, readme: Path | None, quick: bool = False) -> bool:
    """Print the table and the targets, write JSON and PNG, update the README; True when every target is met.

    A quick run is too short to judge the targets by: it passes when no job failed.
    """
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    found = [no_failed_job(results)] if quick else targets(results)
    results["targets"] = [{"name": target.name, "measured": target.measured, "met": target.met} for target in found]
    section = readme_section(results, found)
    print(f"\n{section}\n", flush=True)

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "latest.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    chart(results, output_dir / "latest.png")
    print(f"raw numbers: {output_dir / 'latest.json'}\nchart: {output_dir / 'latest.png'}")
    if readme is not None:
        text = readme.read_text()
        pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
        if pattern.search(text):
            readme.write_text(pattern.sub(lambda _: f"{README_START}\n{section}\n{README_END}", text))
            print(f"updated the performance section of {readme}")
    return all(target.met for target in found)


def readme_section(results: dict, found: list[Target]) -> str:
    machine = results["machine"]
    about = f"{machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, Python {machine['python']}, {results['finished_at']}"
    return f"Measured by `make bench` on {about}:\n\n{table(results)}\n\nTargets:\n\n" + "\n".join(t.line() for t in found)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)
