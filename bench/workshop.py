"""The workshop rows: rooms of callers waiting on ``/submit_job`` at once while the kubelet's probes poll.

In the workshop, each caller behaves as a notebook cell that retries politely:
it waits on ``/submit_job``, and when refused with 429 it sleeps for
``Retry-After`` and asks again; a 202 (its wait ran out) is followed by polling
``/jobs/<id>``. The same room is measured on today's gateway and on a stand-in
for the design before it in the same run: one pool of 16 request threads shared
by every request, no limit on waiting callers, probes on the main port.

In the room of 200, each caller runs the README's cell as written: one waiting
``/submit_job`` of the default job, and no second try; a refusal is a failure.

Meanwhile ``/healthz`` and ``/readyz`` are polled in turn every 0.5 s with a 5 s timeout.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import requests

from bench.workloads import Shape

PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 5.0
# The kubelet's readiness probe in deploy_gateway.yaml gives up after 8 s; what matters here is staying far below it.
PROBE_TARGET_SECONDS = 1.0
# The design before the probe port and admission control: gunicorn's thread pool was all there was.
PREVIOUS_DESIGN_ENVIRON = {"GUNICORN_CMD_ARGS": "--threads 16", "GATEWAY_MAX_WAITING_CALLERS": "100000"}


@dataclass
class WorkshopRun:
    design: str
    callers: int
    shape: Shape
    chunks: Shape
    jobs_done: int = 0
    failures: list[str] = field(default_factory=list)
    # 429 answers; each caller tried again after Retry-After.
    refusals: int = 0
    wall_seconds: float = 0.0
    # Each probe's seconds and whether it answered 200; one that timed out counts with the time it took to fail.
    probes: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def jobs_per_second(self) -> float:
        return self.jobs_done / self.wall_seconds if self.wall_seconds else 0.0

    def probe_percentile(self, q: float) -> float:
        return float(np.percentile([seconds for seconds, _ in self.probes], q)) if self.probes else float("nan")

    @property
    def probes_under_target(self) -> int:
        return sum(healthy and seconds < PROBE_TARGET_SECONDS for seconds, healthy in self.probes)

    def to_json(self) -> dict:
        return {
            "design": self.design,
            "callers": self.callers,
            "shape": list(self.shape),
            "chunks": list(self.chunks),
            "jobs_done": self.jobs_done,
            "failures": self.failures,
            "refusals": self.refusals,
            "wall_seconds": self.wall_seconds,
            "jobs_per_second": self.jobs_per_second,
            "probes": len(self.probes),
            "probe_failures": sum(not healthy for _, healthy in self.probes),
            "probes_under_target": self.probes_under_target,
            "probe_p99_seconds": self.probe_percentile(99),
            "probe_max_seconds": self.probe_percentile(100),
        }


def run_workshop(
    design: str, url: str, probe_url: str, job_ids: list[str], shape: Shape, chunks: Shape, try_again: bool = True
) -> WorkshopRun:
    """Every caller at once, one job each, with the probes polling ``probe_url`` until the last caller is done.

    Without ``try_again`` a caller refused with 429 is a failure, as the README's cell raises.
    """
    run = WorkshopRun(design, len(job_ids), shape, chunks)
    params = {"shape": f"{shape[0]},{shape[1]}", "chunks": f"{chunks[0]},{chunks[1]}"}
    lock = threading.Lock()
    done = threading.Event()

    def probe() -> None:
        for path in itertools.cycle(("/healthz", "/readyz")):
            started = time.perf_counter()
            try:
                healthy = requests.get(f"{probe_url}{path}", timeout=PROBE_TIMEOUT).status_code == 200
            except requests.RequestException:
                healthy = False
            run.probes.append((time.perf_counter() - started, healthy))
            if done.wait(PROBE_INTERVAL):
                return

    def caller(job_id: str) -> None:
        try:
            _submit_and_wait(url, job_id, params, (lambda: _count_refusal(run, lock)) if try_again else None)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the benchmark
            with lock:
                run.failures.append(f"{job_id}: {type(exc).__name__}: {exc}"[:500])
            return
        with lock:
            run.jobs_done += 1

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(len(job_ids)) as pool:
            list(pool.map(caller, job_ids))
    finally:
        run.wall_seconds = time.perf_counter() - started
        done.set()
        prober.join()
    return run


def _count_refusal(run: WorkshopRun, lock: threading.Lock) -> None:
    with lock:
        run.refusals += 1


def _submit_and_wait(url: str, job_id: str, params: dict, on_refused: Callable[[], None] | None) -> None:
    with requests.Session() as session:
        response = session.get(f"{url}/submit_job/{job_id}", params=params, timeout=900)
        while response.status_code == 429 and on_refused is not None:
            on_refused()
            time.sleep(float(response.headers["Retry-After"]))
            response = session.get(f"{url}/submit_job/{job_id}", params=params, timeout=900)
        if response.status_code == 202:
            response = _poll_until_finished(session, f"{url}/jobs/{job_id}")
        if response.status_code != 200 or response.json().get("status") != "done":
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")


def _poll_until_finished(session: requests.Session, job_url: str) -> requests.Response:
    """The job's record once it is no longer queued or running (its caller's wait ran out first)."""
    while True:
        response = session.get(job_url, timeout=60)
        if not response.ok or response.json().get("status") not in ("queued", "running"):
            return response
        time.sleep(1)
