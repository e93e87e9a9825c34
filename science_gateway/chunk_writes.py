"""A job's tasks on the Dask cluster: started, watched, cancelled, and their failures explained.

The gateway process sends a few tasks, each a region of whole chunks; every
chunk is computed by the job's app and stored by a worker (:mod:`region_writes`),
so no array data passes through the web process.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable

import numpy as np
from distributed import CancelledError, Client, as_completed
from distributed.comm import CommClosedError
from distributed.scheduler import KilledWorker

from .apps.base import App, Plan
from .errors import GatewayError
from .region_writes import MAX_TASK_BYTES, AppFailed, AppTask, ArrayTarget, RegionWritten, stop_run, task_regions, write_region
from .results_store import StorageError, describe_storage_failure

logger = logging.getLogger(__name__)

# How long a stopped job waits for its running tasks to end before it removes what they wrote.
STOP_TIMEOUT = 60
# Objects a task has in flight at least, when they are large (shards, or chunks of megabytes).
WRITES_PER_TASK = 4


class JobTimedOut(GatewayError, RuntimeError):
    """The job did not finish within the job timeout; its Dask work was cancelled."""

    status, code = 504, "job_timeout"


class JobFailed(GatewayError, RuntimeError):
    """The Dask work of the job failed; the message says why."""

    status, code = 500, "job_failed"


class JobCancelled(GatewayError, RuntimeError):
    """The job was cancelled before it finished."""

    status, code = 409, "job_cancelled"


class ChunkWrites:
    """The tasks of one job on the cluster: started on creation, then waited on or cancelled.

    A task is about ``MAX_TASK_BYTES``, so a small job, the default one among them,
    is one task: each task costs Dask's hand-offs, and a task's PUTs are
    concurrent anyway (``WRITES_IN_FLIGHT``). On the benchmark's machine one
    trivial task took Dask 11 ms from sent to done, three on three workers 30 ms.
    """

    def __init__(self, client: Client, target: ArrayTarget, app: App, plan: Plan, sources: dict[str, str], job_id: str) -> None:
        self._client = client
        self._job_id = job_id
        # Unique to this run: an id submitted again after a cancel must not inherit the stop.
        self._run_id = f"{job_id}/{uuid.uuid4().hex}"
        # Regions of whole shards when sharded: each shard is written whole, by one task. A task
        # writes its objects concurrently: with at least WRITES_PER_TASK of them, the S3 server
        # always has several requests of each worker in hand.
        # The bytes a job's tasks handle are those they write and those they read of its sources.
        output = plan.output
        unit_bytes = math.prod(output.write_unit) * np.dtype(output.dtype).itemsize
        task_bytes = max(MAX_TASK_BYTES, WRITES_PER_TASK * unit_bytes)
        handled = output.nbytes + sum(source.array.nbytes for source in plan.sources.values())
        regions = task_regions(output.shape, output.write_unit, math.ceil(handled / task_bytes))
        implementation = f"{type(app).__module__}:{type(app).__qualname__}"
        task = AppTask(app.name, app.version, implementation, plan.parameters, output, sources)
        self._sent = time.perf_counter()
        self._futures = client.map(write_region, regions, run_id=self._run_id, target=target, task=task, pure=False)
        self._cancelled = False
        self.phases: dict[str, float] = {}

    def wait(self, timeout: float, on_chunks_written: Callable[[int], None]) -> None:
        """Return once every chunk is stored; raise a job error naming the cause otherwise.

        When it raises, no task of the job is running any more: what was written
        stays written, and can be removed without a late chunk coming back.
        """
        last: RegionWritten | None = None
        try:
            for future in as_completed(self._futures, loop=self._client.loop, timeout=timeout):
                last = future.result()
                on_chunks_written(last.chunks)
            # Released now, while the job is completed, not when its record is dropped: the client batches its
            # messages to the scheduler (10 ms apart at most), and a release sent just before the next job's tasks delays them.
            self._futures = []
        except Exception as exc:
            self._stop()
            raise (JobCancelled(f"job {self._job_id!r} was cancelled") if self._cancelled else self._explain(exc, timeout)) from exc
        if self._cancelled:
            raise JobCancelled(f"job {self._job_id!r} was cancelled")
        if last is not None:
            # The job's time on the cluster along the task that ended last: Dask's hand-offs, then that task's own time.
            self.phases = {
                "scheduling": max(0.0, time.perf_counter() - self._sent - last.seconds),
                "generation": last.making_seconds,
                "puts": last.seconds - last.making_seconds,
            }

    def cancel(self) -> None:
        """Skip every region not yet begun, and every band of a running one not yet made; :meth:`wait` then raises :class:`JobCancelled`."""
        self._cancelled = True
        self._skip_regions_not_begun()

    def _skip_regions_not_begun(self) -> None:
        try:
            self._client.run(stop_run, self._run_id, on_error="ignore")
        except Exception as exc:  # noqa: BLE001 - the futures are cancelled instead, whatever failed
            # No word reaches the workers: cancelling the futures is what is left.
            logger.warning("job %s: could not tell the workers to stop (%s)", self._job_id, exc)
            self._client.cancel(self._futures)

    def _stop(self) -> None:
        self._skip_regions_not_begun()
        try:
            for _ in as_completed(self._futures, loop=self._client.loop, timeout=STOP_TIMEOUT):
                pass
        except TimeoutError:
            logger.warning("job %s: tasks still running %d s after the stop", self._job_id, STOP_TIMEOUT)
        self._client.cancel(self._futures)

    def _explain(self, exc: BaseException, timeout: float) -> BaseException:
        if isinstance(exc, TimeoutError):
            return JobTimedOut(f"job {self._job_id!r} did not finish within {timeout:g} s (GATEWAY_JOB_TIMEOUT)")
        if isinstance(exc, CancelledError):
            return JobFailed(f"job {self._job_id!r} lost its Dask tasks; the cluster may have restarted")
        if isinstance(exc, CommClosedError):
            return JobFailed(f"job {self._job_id!r} lost contact with the Dask cluster: {exc}")
        if isinstance(exc, AppFailed):
            return JobFailed(str(exc))
        if isinstance(exc, KilledWorker):
            return JobFailed(f"job {self._job_id!r} failed: a Dask worker died while running it")
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs"):
            return StorageError(describe_storage_failure(f"writing chunks of job {self._job_id!r} failed", exc))
        return JobFailed(f"job {self._job_id!r} failed: {type(exc).__name__}: {exc}")
