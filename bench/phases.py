"""Where the default job's time goes: the gateway's own phase histograms around jobs run one at a time.

The gateway observes each phase of each job in ``gateway_job_phase_seconds``
(``science_gateway.metrics.JOB_PHASES``); the difference of the histograms'
sums and counts before and after these jobs is their mean per phase. What the
caller waited beyond those phases is "http": the request and its answer, the
parameters' parsing, and the hand-offs between the gateway's threads (the
queue, waking the waiting request).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import requests
from prometheus_client.parser import text_string_to_metric_families

from science_gateway.metrics import JOB_PHASES

METRIC = "gateway_job_phase_seconds"


def phase_totals(url: str) -> dict[str, tuple[float, float]]:
    """Each phase's (sum of seconds, count of observations) as the gateway's ``/metrics`` says now."""
    response = requests.get(f"{url}/metrics", timeout=30)
    response.raise_for_status()
    totals: dict[str, list[float]] = {phase: [0.0, 0.0] for phase in JOB_PHASES}
    for family in text_string_to_metric_families(response.text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            phase = sample.labels.get("phase")
            if phase in totals and sample.name == f"{METRIC}_sum":
                totals[phase][0] = sample.value
            elif phase in totals and sample.name == f"{METRIC}_count":
                totals[phase][1] = sample.value
    return {phase: (seconds, count) for phase, (seconds, count) in totals.items()}


def measure_phases(url: str, run_job: Callable[[str], None], job_ids: Sequence[str]) -> dict:
    """Run the jobs one after another; the mean seconds of each phase, of the caller's whole wait, and "http", the rest."""
    before = phase_totals(url)
    waits = []
    for job_id in job_ids:
        started = time.perf_counter()
        run_job(job_id)
        waits.append(time.perf_counter() - started)
    after = phase_totals(url)
    means = {}
    for phase in JOB_PHASES:
        count = after[phase][1] - before[phase][1]
        if count != len(job_ids):
            raise RuntimeError(f"phase {phase}: {count:g} observations for {len(job_ids)} jobs; was another job running?")
        means[phase] = (after[phase][0] - before[phase][0]) / count
    mean_wait = statistics.fmean(waits)
    return {"jobs": len(job_ids), "seconds": mean_wait, "phases": {"http": mean_wait - sum(means.values()), **means}}


def breakdown_table(measured: dict) -> str:
    """The phases as a Markdown table: mean milliseconds and share of the caller's wait."""
    total = measured["seconds"]
    lines = [
        f"Where the default job's time goes (means of {measured['jobs']} jobs one at a time, {1000 * total:.1f} ms each):",
        "",
        "| phase | ms | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {phase} | {1000 * seconds:.1f} | {100 * seconds / total:.0f} % |" for phase, seconds in measured["phases"].items()]
    return "\n".join(lines)
