"""The job runners: each takes the next queued job, runs it on the cluster with its app, and records how it ended."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from .apps.registry import Apps
from .chunk_writes import ChunkWrites, JobCancelled, JobFailed
from .cluster import ClusterConnection
from .errors import GatewayError
from .job_errors import INTERRUPTED
from .job_records import CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING, JobKey, JobRecord, finish, now
from .job_table import JobTable
from .job_work import runnable
from .metrics import GatewayMetrics, job_event_fields
from .record_keeping import RecordKeeper
from .results_store import RecordChanged, ResultsStore, StorageError
from .settings import Settings

logger = logging.getLogger(__name__)


class JobRunner:
    """What each runner thread does (:meth:`run_queued_jobs`): a gateway starts ``GATEWAY_MAX_RUNNING_JOBS`` of them."""

    def __init__(
        self, table: JobTable, cluster: ClusterConnection, store: ResultsStore, settings: Settings, metrics: GatewayMetrics,
        apps: Apps, keeper: RecordKeeper,
    ) -> None:  # fmt: skip
        self._table = table
        self._cluster = cluster
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._apps = apps
        self._keeper = keeper

    def _next_job(self) -> JobRecord | None:
        """The next queued job, once there is a working cluster to run it on; None when stopping.

        Jobs wait in the queue, not half-started, while there is no cluster,
        and one that was lost while a runner waited for a job is replaced first.
        """
        table = self._table
        while True:
            while not self._cluster.wait_until_ready(1.0):
                if table.drain_deadline is not None:
                    return None
            with table.lock:
                table.lock.wait_for(lambda: table.queue or table.drain_deadline is not None)
                if table.drain_deadline is not None:
                    return None
                if not self._cluster.wait_until_ready(0):
                    continue
                record = table.records[table.queue.popleft()]
                record.status, record.started_at = RUNNING, now()
                table.running[record.key] = None
                table.changed(record.key)
            logger.info("job %s started", record.key, extra=job_event_fields(record.job_id, "started", RUNNING))
            return record

    def run_queued_jobs(self) -> None:
        """Run queued jobs one after another until the gateway stops; a job that breaks the runner fails, and the runner goes on."""
        while True:
            record = None
            try:
                record = self._next_job()
                if record is None:
                    return
                self._run(record)
            except Exception:
                # A runner that died would leave its slot empty for the process's life.
                self._metrics.runner_errors.inc()
                logger.exception("a job runner failed%s; it goes on", f" on job {record.key}" if record else "")
                if record is not None:
                    self._end_unexpectedly(record)

    def _end_unexpectedly(self, record: JobRecord) -> None:
        table = self._table
        error = {"code": "internal_error", "message": "the gateway failed while running this job; see its log"}
        key = record.key
        with table.lock:
            final = None
            if table.records.get(key) is record and record.status == RUNNING:
                final = table.records[key] = finish(record, FAILED, error=error)
                # Reserved until saved (it may be reserved already, by _complete): a resubmission waits for the save.
                table.reserved.add(key)
            table.running.pop(key, None)
            table.cancel_requested.pop(key, None)
            table.changed(key)
        if final is not None:
            try:
                self._keeper.discard_result(record)
                self._keeper.save_quietly(final)
            finally:
                with table.lock:
                    table.reserved.discard(key)
                    table.changed(key)

    def _run(self, record: JobRecord) -> None:
        table = self._table
        started = time.monotonic()
        # Where its time went (metrics.JOB_PHASES), kept when it is done.
        phases: dict[str, float] = {}
        status, error = DONE, None
        failed_for_a_known_reason = True
        key = record.key
        try:
            with table.lock:
                # Its app as offered now, and its sources as they are now: a source being deleted fails it here.
                work = runnable(record.work, self._apps, lambda job_id: table.source(JobKey(record.owner, job_id)))
            result = self._store.pending_result(record.record_name, record.place, record.work.output, self._settings.zarr_format)
            if self._keeper.shared:
                # The claim: of two replicas that both took this job, the one whose save comes second finds it changed.
                try:
                    self._keeper.save(record)
                except RecordChanged:
                    self._lose(record)
                    return
                # What a previous run of this id left: removed by the run that holds the id now, never by a submission.
                if self._store.exists(record.place):
                    self._store.delete(record.place)
                self._store.begin_result(result, None)
            else:
                self._store.begin_result(result, self._keeper.stored(record))
            client = self._cluster.client()
            phases["start"] = time.monotonic() - started
            writes = ChunkWrites(client, result.target, work.app, work.plan, work.source_groups, record.job_id)
            with table.lock:
                table.running[key] = writes
                if table.stop_requested.is_set() or key in table.cancel_requested:
                    writes.cancel()
            writes.wait(self._settings.job_timeout, lambda written: self._count_chunks(record, written))
            phases |= writes.phases
            completing = time.monotonic()
            self._complete(key, lambda: self._store.mark_complete(result))
        except JobCancelled:
            with table.lock:
                reason = table.cancel_requested.get(key)
            status = FAILED if table.stop_requested.is_set() or reason is not None else CANCELLED
            error = INTERRUPTED if table.stop_requested.is_set() else reason
        except Exception as exc:
            failed_for_a_known_reason = isinstance(exc, GatewayError)
            if not failed_for_a_known_reason:
                logger.exception("job %s failed unexpectedly", key)
            code = exc.code if isinstance(exc, GatewayError) else JobFailed.code
            with table.lock:
                # A job stopped for a reason (its source deleted) ends with that reason, whatever its stop raised.
                reason = table.cancel_requested.get(key)
            status, error = FAILED, reason or {"code": code, "message": str(exc)}
            if isinstance(exc, StorageError):
                self._metrics.s3_errors.inc()
        if status != DONE:
            self._keeper.discard_result(record)
        with table.lock:
            # Stopped at the deadline, or refused by a cluster that takes no new work as the process ends; never a job
            # cancelled or failed for a reason of its own (its app's error, its timeout), which ends as it would have.
            stopped_by_the_stop = (
                status == FAILED and table.drain_deadline is not None and key not in table.cancel_requested
                and (error is INTERRUPTED or not failed_for_a_known_reason)
            )  # fmt: skip
        if stopped_by_the_stop and self._keeper.shared:
            self._hand_back(record)
            return
        with table.lock:
            final = finish(record, status, error=error, seconds=round(time.monotonic() - started, 3))
        # Saved before it shows as finished, so that a DELETE of the finished job cannot race the save
        # (a DELETE of a job being completed waits on its reservation).
        standing = self._keeper.save_quietly(final)
        if standing is not final:
            # Another replica ended it first (its owner cancelled it there, or it was taken over as interrupted).
            if status == DONE:
                self._keeper.discard_result(record)
            if standing is not None and standing.status in FINISHED and standing.replica == self._keeper.replica:
                # Its tasks have stopped and what they wrote is gone: its id may be submitted again.
                standing = self._keeper.save_quietly(replace(standing, replica=None))
            with table.lock:
                table.running.pop(key, None)
                table.cancel_requested.pop(key, None)
                table.reserved.discard(key)
                self._keeper.settle(key, standing)
            return
        # Counted and logged before it shows as finished: a caller who learns the job is done finds both.
        self._metrics.job_finished(status, final.seconds or 0.0, record.work.app)
        if status == DONE:
            for phase, seconds in (phases | {"completion": time.monotonic() - completing}).items():
                self._metrics.job_phases.labels(phase).observe(seconds)
        logger.info(
            "job %s %s in %.3f s%s", key, status, final.seconds, f": {error['message']}" if error else "",
            extra=job_event_fields(record.job_id, status, status, final.seconds),
        )  # fmt: skip
        with table.lock:
            table.records[key] = final
            table.running.pop(key, None)
            table.cancel_requested.pop(key, None)
            table.reserved.discard(key)
            table.changed(key)

    def _hand_back(self, record: JobRecord) -> None:
        """Queue again, held by no replica, a job this stopping replica could not finish (its deadline came, or its
        cluster refused new work as the process ended): another replica takes it over and runs it from the start."""
        key = record.key
        queued = replace(record, status=QUEUED, started_at=None, chunks_written=0, replica=None)
        standing = self._keeper.save_quietly(queued)
        logger.info("job %s handed over to the other replicas: this one is stopping", key, extra=job_event_fields(record.job_id, "handed_over", QUEUED))
        with self._table.lock:
            self._table.running.pop(key, None)
            self._table.cancel_requested.pop(key, None)
            self._table.reserved.discard(key)
            self._keeper.settle(key, standing)

    def _lose(self, record: JobRecord) -> None:
        """Give up a job whose claim another replica's save came before: it stands as that replica saved it."""
        key = record.key
        logger.info("job %s was taken or ended by another replica first; this one leaves it", key)
        standing = self._keeper.read(key)
        with self._table.lock:
            self._table.running.pop(key, None)
            self._table.cancel_requested.pop(key, None)
            self._keeper.settle(key, standing)

    def _complete(self, key: JobKey, mark_complete: Callable[[], None]) -> None:
        """Mark a job's result complete, unless its cancellation came first: then it ends cancelled, never done.

        From here on the job is reserved: a DELETE that comes now waits for it to be done,
        then deletes it, rather than cancelling a job whose result is already whole.
        """
        table = self._table
        with table.lock:
            if key in table.cancel_requested:
                raise JobCancelled(f"job {key.job_id!r} was cancelled")
            table.reserved.add(key)
        mark_complete()

    def _count_chunks(self, record: JobRecord, written: int) -> None:
        with self._table.lock:
            record.chunks_written += written
            # Followers of the job see its progress as chunks land.
            self._table.progressed(record.key)
