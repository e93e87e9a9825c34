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

from bench.phases import breakdown_table

README_START = "<!-- bench:start -->"
# The floors (the job's objects written with obstore from one process) each workload is compared with.
FLOOR_OF = {"floor": "floor", "floor-sharded": "floor-sharded", "baseline": "floor", "gateway": "floor", "sharded": "floor-sharded"}
WORKLOADS = ("floor", "floor-sharded", "baseline", "gateway", "sharded")
README_END = "<!-- bench:end -->"
# The object a read sends is at most a block (object_reads.BLOCK_BYTES) in the gateway at once, per reader; ten readers at once.
READ_GROWTH_MB = 50
# A start-up's records must fit beside the gateway in its pod's 1 GiB (deploy_gateway.yaml) with room to spare.
RECORDS_GROWTH_MB = 400
# A job's result goes from the workers to S3: the gateway holds its record and its events, never its bytes.
SCALE_GROWTH_MB = 50
# The targets against the floors measured in the same run.
UNSHARDED_P50_RATIO, SHARDED_P50_RATIO, LARGE_SHARE, THROUGHPUT_SHARE = 1.2, 2.0, 0.9, 0.9


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    target: str
    met: bool

    def line(self) -> str:
        return f"- [{'x' if self.met else ' '}] {self.name}: {self.measured} (target {self.target}): {'met' if self.met else 'MISSED'}"


def _run(results: dict, workload: str, concurrency: int) -> dict:
    return next(run for run in results["runs"] if run["workload"] == workload and run["concurrency"] == concurrency)


def targets(results: dict) -> list[Target]:
    floor_1, floor_sharded_1, gateway_1, sharded_1 = (_run(results, name, 1) for name in ("floor", "floor-sharded", "gateway", "sharded"))
    floor_8, baseline_8, gateway_8 = (_run(results, name, 8) for name in ("floor", "baseline", "gateway"))
    latency_ratio = gateway_1["p50_seconds"] / floor_1["p50_seconds"]
    sharded_ratio = sharded_1["p50_seconds"] / floor_sharded_1["p50_seconds"]
    # The floor's best rate, at either concurrency: from one process, 8 of its jobs at once can be slower than one at a time.
    floor_rate = max(floor_1["jobs_per_second"], floor_8["jobs_per_second"])
    throughput_share = gateway_8["jobs_per_second"] / floor_rate
    baseline_ratio = gateway_8["jobs_per_second"] / baseline_8["jobs_per_second"]
    requests, sharded_requests = results["requests_per_job"]["gateway"], results["requests_per_job"]["sharded"]
    memory = results["memory_run"]
    growth = memory["rss_mb_after"] - memory["rss_mb_before"]
    found = [
        Target(
            "unsharded default job at concurrency 1",
            f"p50 {gateway_1['p50_seconds']:.3f} s vs floor {floor_1['p50_seconds']:.3f} s: {latency_ratio:.2f}x",
            f"<= {UNSHARDED_P50_RATIO}x",
            latency_ratio <= UNSHARDED_P50_RATIO,
        ),
        Target(
            "sharded default job at concurrency 1",
            f"p50 {sharded_1['p50_seconds']:.3f} s vs floor-sharded {floor_sharded_1['p50_seconds']:.3f} s: {sharded_ratio:.2f}x",
            f"<= {SHARDED_P50_RATIO}x",
            sharded_ratio <= SHARDED_P50_RATIO,
        ),
        Target(
            "unsharded default jobs at concurrency 8",
            f"{gateway_8['jobs_per_second']:.2f} jobs/s vs the floor's best {floor_rate:.2f} jobs/s: {100 * throughput_share:.0f} %",
            f">= {100 * THROUGHPUT_SHARE:.0f} %",
            throughput_share >= THROUGHPUT_SHARE,
        ),
        Target(
            "unsharded default jobs at concurrency 8 against the baseline",
            f"{gateway_8['jobs_per_second']:.2f} jobs/s vs baseline {baseline_8['jobs_per_second']:.2f} jobs/s: {baseline_ratio:.2f}x",
            ">= 3x",
            baseline_ratio >= 3,
        ),
        Target("S3 requests per unsharded default job", f"{requests:.1f}", "<= 110", requests <= 110),
        Target("S3 requests per sharded default job", f"{sharded_requests:.1f}", "<= 8", sharded_requests <= 8),
    ]
    for large in _large_pairs(results):
        if large["chunks"][0] == 1000:
            share = large["gateway"]["megabytes_per_second"] / large["floor-large"]["megabytes_per_second"]
            found.append(Target(
                f"{_size(large)}",
                f"{large['gateway']['megabytes_per_second']:.0f} MB/s vs floor-large {large['floor-large']['megabytes_per_second']:.0f} MB/s "
                f"(medians of {len(large['gateway']['seconds'])}): {100 * share:.0f} %",
                f">= {100 * LARGE_SHARE:.0f} %",
                share >= LARGE_SHARE,
            ))  # fmt: skip
    today = _workshop(results, "today")
    found.append(Target(
        f"workshop of {today['callers']} callers, probes answered under 1 s",
        f"{today['probes_under_target']} of {today['probes']}, the slowest {today['probe_max_seconds']:.3f} s",
        "every one",
        today["probes_under_target"] == today["probes"] > 0,
    ))  # fmt: skip
    room = results["room"]
    found.append(Target(
        f"room of {room['callers']}, no retry by hand",
        f"{room['jobs_done']} done, the last after {room['wall_seconds']:.1f} s; probes {room['probes_under_target']} of {room['probes']} "
        f"under 1 s, p99 {room['probe_p99_seconds']:.3f} s",
        "every caller's job done, every probe under 1 s",
        room["jobs_done"] == room["callers"] and room["probes_under_target"] == room["probes"] > 0,
    ))  # fmt: skip
    reads = results["reads"]
    ratio = reads["http_megabytes_per_second"] / reads["s3_megabytes_per_second"] if reads["s3_megabytes_per_second"] else 0.0
    read_growth = reads["rss_mb_peak"] - reads["rss_mb_before"]
    found += [
        Target(
            f"reading {_size(reads)} through http_url",
            f"{reads['http_megabytes_per_second']:.0f} MB/s vs {reads['s3_megabytes_per_second']:.0f} MB/s straight from S3, same client: "
            f"{100 * ratio:.0f} %",
            ">= 70 %",
            ratio >= 0.7,
        ),
        Target("gateway memory while it serves that read", f"peak growth {read_growth:+.1f} MB", f"< {READ_GROWTH_MB} MB", read_growth < READ_GROWTH_MB),
        Target(f"gateway memory over {memory['jobs']} jobs", f"growth {growth:+.1f} MB", "< 30 MB over >= 500 jobs", growth < 30 and memory["jobs"] >= 500),
        *records_targets(results["records"]),
        *scale_targets(results["scale"]),
        no_failed_job(results),
        floors_without_server_errors(results),
    ]
    return found


def scale_targets(scale: dict) -> list[Target]:
    growth = scale["rss_mb_peak"] - scale["rss_mb_before"]
    peaks = [worker["rss_mb_peak"] for worker in scale["workers"]]
    limit = scale["worker_memory_limit_mb"]
    return [
        Target(
            f"gateway memory while a {_size(scale)} job ({scale['megabytes'] / 1000:.1f} GB) runs",
            f"{scale['rss_mb_before']:.0f} MB before, peak {scale['rss_mb_peak']:.0f} MB: {growth:+.1f} MB; "
            f"{scale['seconds']:.1f} s, {scale['megabytes_per_second']:.0f} MB/s",
            f"growth < {SCALE_GROWTH_MB} MB",
            growth < SCALE_GROWTH_MB and not scale["failures"],
        ),
        Target(
            "every Dask worker's memory in that job",
            f"peaks {', '.join(f'{peak:.0f}' for peak in peaks)} MB of a {limit:.0f} MB limit",
            "each below its limit",
            bool(peaks) and max(peaks) < limit,
        ),
    ]


def records_targets(records: dict) -> list[Target]:
    ratio = records["seconds"] / records["floor_seconds"] if records["floor_seconds"] else float("inf")
    growth = records["peak_rss_mb"] - records["rss_before_mb"]
    return [
        Target(
            f"a start-up reading {records['records']} job records",
            f"{records['seconds']:.1f} s vs obstore's fetch {records['floor_seconds']:.1f} s: {ratio:.2f}x",
            "<= 1.5x",
            ratio <= 1.5,
        ),
        Target("and the memory it holds them in", f"{growth:+.0f} MB", f"< {RECORDS_GROWTH_MB} MB", growth < RECORDS_GROWTH_MB),
    ]


def no_failed_job(results: dict) -> Target:
    failures = sum(len(run["failures"]) for run in results["runs"]) + len(results["memory_run"]["failures"])
    failures += sum(len(large["failures"]) for large in results["large_jobs"])
    failures += sum(len(room["failures"]) for room in [*results["workshop"], results["room"]])
    failures += "failure" in results.get("phases", {})
    failures += len(results["reads"]["failures"]) + len(results["coarsen"]["failures"]) + len(results["scale"]["failures"])
    return Target("no failed job in any run", f"{failures} failed", "none", failures == 0)


def floors_without_server_errors(results: dict) -> Target:
    """A floor the S3 server failed requests of (retried by the client) is slower than the server allows: no floor at all."""
    errors = sum(run["server_errors"] for run in results["runs"] if run["workload"].startswith("floor"))
    return Target("no S3 server error in the floors' runs (a retried request would make a floor slower)", f"{errors} errors", "none", errors == 0)


def _workshop(results: dict, design: str) -> dict:
    return next(room for room in results["workshop"] if room["design"] == design)


def _size(large: dict) -> str:
    size = f"{large['shape'][0]}x{large['shape'][1]} in {large['chunks'][0]}x{large['chunks'][1]} chunks"
    shards = large.get("shards")
    if isinstance(shards, str):
        return size + (", sharded (auto)" if shards == "auto" else ", unsharded")
    return size + (f", {shards[0]}x{shards[1]} shards" if shards else "")


def _large_pairs(results: dict) -> list[dict]:
    """Each large job with its floor's samples: {"shape", "chunks", "shards", "gateway": {...}, "floor-large": {...}}."""
    pairs: dict[tuple, dict] = {}
    for large in results["large_jobs"]:
        key = (tuple(large["shape"]), tuple(large["chunks"]), large["shards"])
        pair = pairs.setdefault(key, {"shape": large["shape"], "chunks": large["chunks"], "shards": large["shards"]})
        pair[large["workload"]] = large
    return list(pairs.values())


def table(results: dict) -> str:
    requests = results["requests_per_job"]
    lines = [
        "| workload | concurrency | jobs | p50 s | p95 s | jobs/s | its floor | p50 / floor | jobs/s / floor | S3 requests/job | S3 errors |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        floor_name = FLOOR_OF[run["workload"]]
        floor = _run(results, floor_name, run["concurrency"])
        lines.append(
            f"| {run['workload']} | {run['concurrency']} | {run['jobs']} | {run['p50_seconds']:.3f} | {run['p95_seconds']:.3f} "
            f"| {run['jobs_per_second']:.2f} | {floor_name} | {run['p50_seconds'] / floor['p50_seconds']:.2f} "
            f"| {run['jobs_per_second'] / floor['jobs_per_second']:.2f} | {requests[run['workload']]:.1f} | {run['server_errors']} |"
        )
    lines += ["", floors_paragraph(results)]
    if results["large_jobs"]:
        lines += [
            "",
            "Large jobs, each sample of the gateway's beside one of floor-large (100 PUTs of 4 MB, the same 400 MB), in turns:",
            "",
            "| large job | samples | floor-large s min / median / max | floor-large MB/s | gateway s min / median / max | gateway MB/s | gateway / floor |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for large in _large_pairs(results):
            floor, gateway = large["floor-large"], large["gateway"]
            lines.append(
                f"| {_size(large)} | {len(gateway['seconds'])} | {_spread(floor)} | {floor['megabytes_per_second']:.0f} | {_spread(gateway)} "
                f"| {gateway['megabytes_per_second']:.0f} | {gateway['megabytes_per_second'] / floor['megabytes_per_second']:.2f} |"
            )
    lines += ["", cpu_paragraph(results), "", scale_paragraph(results["scale"])]
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
    lines += [
        "",
        f"Gateway process memory: {during_runs['before']:.0f} MB before and {during_runs['after']:.0f} MB after the runs "
        f"above; {memory['rss_mb_before']:.0f} MB before and {memory['rss_mb_after']:.0f} MB after {memory['jobs']} more jobs "
        "at concurrency 8.",
    ]
    return "\n".join(lines)


def _spread(large: dict) -> str:
    return f"{large['min_seconds']:.2f} / {large['median_seconds']:.2f} / {large['max_seconds']:.2f}"


def floors_paragraph(results: dict) -> str:
    """The floors measured in this run: what each writes, its concurrency, and its numbers."""
    objects, tuned = results["default_job_objects"], results["floor_batch_size"]
    record = next(size for key, size in objects["gateway"].items() if key.endswith(".json") and not key.startswith("{job}"))
    sharded = ", ".join(f"{key.replace('{job}', '<job>')} {size} B" for key, size in objects["sharded"].items())
    floor_1, floor_8, floor_sharded_1 = _run(results, "floor", 1), _run(results, "floor", 8), _run(results, "floor-sharded", 1)
    text = (
        "Floors, measured in this run: each the job's objects written straight to S3 from one process with obstore "
        "(the workers' client, the fastest here), their bytes made before the clock. "
        f"floor: the unsharded default job's 100 chunks of 40 kB and its {record}-byte record, "
        f"{tuned['floor']['chosen']} requests in flight (the lowest p50 of {_tried(tuned['floor'])}): "
        f"p50 {floor_1['p50_seconds']:.3f} s, {floor_1['jobs_per_second']:.2f} jobs/s alone, {floor_8['jobs_per_second']:.2f} jobs/s 8 at once. "
        f"floor-sharded: exactly the {len(objects['sharded'])} objects a sharded default job leaves ({sharded}), all at once: "
        f"p50 {floor_sharded_1['p50_seconds']:.3f} s."
    )
    if "floor-large" in tuned:
        text += (
            f" floor-large: 100 PUTs of 4 MB, {tuned['floor-large']['chosen']} requests in flight "
            f"(the best MB/s of {_tried(tuned['floor-large'])})."
        )
    return text


def _tried(tuning: dict) -> str:
    return ", ".join(f"{size}: {seconds:.3f} s" for size, seconds in tuning["p50_seconds"].items())


def cpu_paragraph(results: dict) -> str:
    """The gateway process's CPU seconds, and its Dask workers', per default job and per GB of large jobs."""
    per_job = results["cpu"]["per_default_job"]
    parts = [
        f"{1000 * each['gateway_cpu_seconds'] / each['jobs']:.1f} ms per {'sharded' if name == 'sharded' else 'unsharded'} default job "
        f"(its workers {1000 * each['workers_cpu_seconds'] / each['jobs']:.1f} ms)"
        for name, each in per_job.items()
        if each["jobs"]
    ]
    text = f"CPU (user + system) of the gateway process, read around its own runs at concurrency 1: {' and '.join(parts)}"
    per_gb = results["cpu"].get("per_gb")
    if per_gb and per_gb["gigabytes"]:
        text += (
            f"; over its large jobs ({per_gb['gigabytes']:.1f} GB), {per_gb['gateway_cpu_seconds'] / per_gb['gigabytes']:.2f} s per GB "
            f"(its workers {per_gb['workers_cpu_seconds'] / per_gb['gigabytes']:.2f} s per GB)"
        )
    return text + "."


def scale_paragraph(scale: dict) -> str:
    workers = ", ".join(f"{worker['rss_mb_peak']:.0f}" for worker in scale["workers"])
    return (
        f"Scale: one {_size(scale)} float32 job ({scale['megabytes'] / 1000:.1f} GB, GATEWAY_MAX_ELEMENTS={scale['max_elements']}) on a "
        f"gateway of its own: {scale['seconds']:.1f} s, {scale['megabytes_per_second']:.0f} MB/s; the gateway process "
        f"{scale['rss_mb_before']:.0f} MB before, at most {scale['rss_mb_peak']:.0f} MB while it ran, {scale['gateway_cpu_seconds']:.1f} CPU s; "
        f"its Dask workers at most {workers} MB, {scale['workers_cpu_seconds']:.0f} CPU s in all; each worker's memory limit "
        f"{scale['worker_memory_limit_mb']:.0f} MB ({scale['worker_memory_limit_from']})."
    )


def chart(results: dict, path: Path) -> None:
    figure, (latency, throughput, bandwidth) = plt.subplots(1, 3, figsize=(15, 4.5))
    workloads = list(WORKLOADS)
    colours = {
        "floor": "tab:grey", "floor-sharded": "tab:brown", "floor-large": "tab:grey", "baseline": "tab:orange", "gateway": "tab:blue",
        "sharded": "tab:green",
    }  # fmt: skip
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
        for offset, name in enumerate(("floor-large", "gateway")):
            rates = [large[name]["megabytes_per_second"] for large in pairs]
            bandwidth.bar([index * 3 + offset for index in range(len(pairs))], rates, color=colours[name], label=name)
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
    phases = f"\n\n{breakdown_table(results['phases'])}" if "phases" in results.get("phases", {}) else ""
    return f"Measured by `make bench` on {about}:\n\n{table(results)}{phases}\n\nTargets:\n\n" + "\n".join(t.line() for t in found)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)
