"""The job: the Dask workers build a random array and write it, chunk by chunk, as Zarr.

The gateway process only writes the result's metadata and sends a task graph;
every chunk is generated and stored by a worker, so no array data passes through
the web process.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask.array as da
from distributed import Future
from distributed.comm import CommClosedError
from distributed.scheduler import KilledWorker

from cluster import ClusterConnection
from results_store import ARRAY_NAME, ResultsStore, StorageError, describe_storage_failure

logger = logging.getLogger(__name__)

JOB_ID_RULE = "1 to 128 characters of letters, digits, '.', '_' and '-', not starting with '.'"
_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", re.ASCII)


class InvalidJobId(ValueError):
    """The job id is not one the service accepts; the message says what is allowed."""


class JobAlreadyExists(RuntimeError):
    """A result is stored, or a job is running, under this id."""

    def __init__(self, job_id: str, url: str) -> None:
        super().__init__(f"job {job_id!r} already exists at {url}; results are never overwritten, choose another id")
        self.url = url


class JobTimedOut(RuntimeError):
    """The job did not finish within the job timeout; its Dask work was cancelled."""


class JobFailed(RuntimeError):
    """The Dask work of the job failed; the message says why."""


@dataclass(frozen=True)
class RandomArraySpec:
    shape: tuple[int, ...] = (1000, 1000)
    chunks: tuple[int, ...] = (100, 100)
    dtype: str = "float32"


@dataclass(frozen=True)
class JobResult:
    job_id: str
    url: str
    array_url: str
    spec: RandomArraySpec
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": "done",
            "url": self.url,
            "array_url": self.array_url,
            "shape": list(self.spec.shape),
            "chunks": list(self.spec.chunks),
            "dtype": self.spec.dtype,
            "seconds": round(self.seconds, 3),
        }


def validate_job_id(job_id: str) -> str:
    """Return the id unchanged, or raise :class:`InvalidJobId`."""
    if not _JOB_ID.fullmatch(job_id):
        shown = job_id if len(job_id) <= 40 else job_id[:40] + "..."
        raise InvalidJobId(f"invalid job id {shown!r}: a job id is {JOB_ID_RULE}")
    return job_id


class RandomArrayJobs:
    """Runs random-array jobs on the service's cluster and stores them in its results store."""

    def __init__(self, cluster: ClusterConnection, store: ResultsStore, zarr_format: int, timeout: float) -> None:
        self._cluster = cluster
        self._store = store
        self._zarr_format = zarr_format
        self._timeout = timeout
        self._running: set[str] = set()
        self._running_lock = threading.Lock()

    def run(self, job_id: str, spec: RandomArraySpec = RandomArraySpec()) -> JobResult:
        """Write a new random array under ``job_id`` and return once every chunk is stored."""
        validate_job_id(job_id)
        client = self._cluster.client()
        started = time.monotonic()
        with self._reserved(job_id):
            if self._store.exists(job_id):
                raise JobAlreadyExists(job_id, self._store.url_for(job_id))
            target = self._store.create_result(job_id, spec.shape, spec.chunks, spec.dtype, self._zarr_format)
            values = da.random.default_rng().random(spec.shape, chunks=spec.chunks, dtype=spec.dtype)
            # Chunks and zarr chunks coincide, so no two tasks write one object and no lock is needed.
            future: Future = client.compute(da.store(values, target, lock=False, compute=False))
            try:
                future.result(timeout=self._timeout)
                self._store.mark_complete(job_id)
            except Exception as exc:
                future.cancel()
                self._discard(job_id)
                raise self._explain(job_id, exc) from exc
        seconds = time.monotonic() - started
        logger.info("job %s done in %.3f s", job_id, seconds)
        url = self._store.url_for(job_id)
        return JobResult(job_id, url, f"{url}/{ARRAY_NAME}", spec, seconds)

    @contextmanager
    def _reserved(self, job_id: str) -> Iterator[None]:
        # Two requests for one id at once: the second must not see "no result yet" and write too.
        with self._running_lock:
            if job_id in self._running:
                raise JobAlreadyExists(job_id, self._store.url_for(job_id))
            self._running.add(job_id)
        try:
            yield
        finally:
            with self._running_lock:
                self._running.discard(job_id)

    def _discard(self, job_id: str) -> None:
        # A half-written array must not stand where a result is expected.
        try:
            self._store.delete(job_id)
        except StorageError:
            logger.exception("job %s failed and its partial result could not be removed", job_id)

    def _explain(self, job_id: str, exc: BaseException) -> BaseException:
        url = self._store.url_for(job_id)
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, TimeoutError):
            return JobTimedOut(f"job {job_id!r} did not finish within {self._timeout:g} s (GATEWAY_JOB_TIMEOUT)")
        if isinstance(exc, CommClosedError):
            return JobFailed(f"job {job_id!r} lost contact with the Dask cluster: {exc}")
        if isinstance(exc, KilledWorker):
            return JobFailed(f"job {job_id!r} failed: a Dask worker died while running it")
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs"):
            return StorageError(describe_storage_failure(f"writing chunks of {url} failed", exc))
        return JobFailed(f"job {job_id!r} failed: {type(exc).__name__}: {exc}")
