"""Running a workload's jobs at a given concurrency, counting their S3 requests, and reading memory."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from devtools.local_s3 import LocalS3

# rclone logs every S3 request at DEBUG as "serve s3: <VERB> <what>", e.g. "CREATE OBJECT", "LIST BUCKET".
_REQUEST_LINE = re.compile(r"serve s3: [A-Z]+(?: [A-Z]+)*(?=[:\s])")
_ERROR_LINE = re.compile(r"^\S+ \S+ ERROR : serve s3:", re.MULTILINE)


@dataclass
class Run:
    """The jobs of one workload at one concurrency."""

    workload: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    # Requests the S3 server failed (and the client retried) while these jobs ran.
    server_errors: int = 0

    def add(self, other: Run) -> None:
        self.latencies += other.latencies
        self.wall_seconds += other.wall_seconds
        self.failures += other.failures
        self.server_errors += other.server_errors

    @property
    def jobs(self) -> int:
        return len(self.latencies) + len(self.failures)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def jobs_per_second(self) -> float:
        return len(self.latencies) / self.wall_seconds if self.wall_seconds else 0.0

    def to_json(self) -> dict:
        return {
            "workload": self.workload,
            "concurrency": self.concurrency,
            "jobs": self.jobs,
            "p50_seconds": self.percentile(50),
            "p95_seconds": self.percentile(95),
            "jobs_per_second": self.jobs_per_second,
            "wall_seconds": self.wall_seconds,
            "failures": self.failures,
            "server_errors": self.server_errors,
            "latencies": self.latencies,
        }


def run_jobs(
    workload: str, run_job: Callable[[str], None], job_ids: Sequence[str], concurrency: int, server_log: Path | None = None
) -> Run:
    """Run every job, ``concurrency`` at a time; a job that raises is a failure, not an abort.

    With the S3 server's log, the errors it logged meanwhile are counted.
    """
    run = Run(workload, concurrency)
    offset = server_log.stat().st_size if server_log else 0

    def one(job_id: str) -> None:
        started = time.perf_counter()
        try:
            run_job(job_id)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the benchmark
            run.failures.append(f"{job_id}: {type(exc).__name__}: {exc}"[:500])
            return
        run.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, job_ids))
    run.wall_seconds = time.perf_counter() - started
    if server_log:
        run.server_errors = len(_ERROR_LINE.findall(_read_from(server_log, offset)))
    return run


def _read_from(log_file: Path, offset: int) -> str:
    with log_file.open(errors="replace") as log:
        log.seek(offset)
        return log.read()


def count_requests(s3: LocalS3, log_file: Path, run_job: Callable[[str], None], job_ids: Sequence[str]) -> float:
    """S3 requests per job, from the server's request log, jobs run one at a time."""
    s3.set_log_level("DEBUG")
    offset = log_file.stat().st_size
    try:
        for job_id in job_ids:
            run_job(job_id)
    finally:
        s3.set_log_level("NOTICE")
    return len(_REQUEST_LINE.findall(_read_from(log_file, offset))) / len(job_ids)


def rss_megabytes(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


# How often a process's memory is sampled while something runs.
SAMPLE_SECONDS = 0.05


class PeakMemory:
    """The most resident memory of a process, in MB, sampled in a thread from creation until :meth:`stop`."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self._peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            self._peak = max(self._peak, self._process.memory_info().rss / 2**20)
            if self._done.wait(SAMPLE_SECONDS):
                return

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self._peak


def descendants(pid: int) -> list[psutil.Process]:
    """A process's children, theirs and so on; those that end meanwhile are left out."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_dask_worker(process: psutil.Process) -> bool:
    """A LocalCluster's worker: a process its nanny spawned with multiprocessing (not multiprocessing's resource tracker)."""
    try:
        return "spawn_main" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class ProcessCpu:
    """CPU seconds (user + system) of a gateway process and, apart, of its descendants (its Dask workers), between reads.

    Each descendant is counted by its own id: one that starts meanwhile counts from its start, one that ends is left out.
    """

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)

    def read(self) -> tuple[float, dict[int, float]]:
        children = {}
        for child in descendants(self._process.pid):
            try:
                children[child.pid] = _cpu_seconds(child)
            except psutil.Error:
                continue
        return _cpu_seconds(self._process), children

    @staticmethod
    def spent(before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]]) -> tuple[float, float]:
        """The gateway's seconds and its descendants' between two reads."""
        children = sum(seconds - before[1].get(pid, 0.0) for pid, seconds in after[1].items())
        return after[0] - before[0], children


class PeakTreeMemory:
    """The most resident memory, in MB, of each Dask worker under a process, by worker id, sampled until :meth:`stop`."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._peaks: dict[int, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            for process in descendants(self._pid):
                if not is_dask_worker(process):
                    continue
                try:
                    rss = process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self._peaks[process.pid] = max(self._peaks.get(process.pid, 0.0), rss)
            if self._done.wait(SAMPLE_SECONDS):
                return

    def stop(self) -> dict[int, float]:
        self._done.set()
        self._thread.join()
        return dict(self._peaks)
