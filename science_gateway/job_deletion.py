"""Cancelling and deleting jobs, and deleting those whose time is up.

A done job being deleted may be a source that other jobs read: those fail
first, saying why (a queued one at once, a running one once its tasks have
stopped), so that no job reads a result that is going. Expiry never fails a
job: a source that jobs read expires once they have ended.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

from .job_errors import JobNotFound
from .job_records import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, JobKey, JobRecord, finish, has_expired
from .job_table import JobTable, reads
from .job_work import SourceGone
from .metrics import GatewayMetrics, job_event_fields
from .record_keeping import RecordKeeper
from .results_store import ResultsStore, StorageError
from .settings import Settings

logger = logging.getLogger(__name__)

# Saves of a cancellation of a job another replica holds, each after its record changed first.
CANCEL_ATTEMPTS = 3


class JobDeletion:
    """Cancels and deletes a table's jobs; its expiry sweep (:meth:`expire_results`) runs in a thread of its own.

    Each job is reserved while it is cancelled or deleted: deletions of two jobs go on at once, of one job one after the other.
    """

    def __init__(self, table: JobTable, store: ResultsStore, settings: Settings, metrics: GatewayMetrics, keeper: RecordKeeper) -> None:
        self._table = table
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._keeper = keeper

    def cancel_or_delete(self, key: JobKey, delete_finished: bool = True) -> JobRecord | None:
        """Cancel a queued or running job and return its record; delete a finished one and return None
        (unless not ``delete_finished``: then return its record, untouched).

        A running job ends cancelled, its result removed, however far its tasks
        got; one whose result was being marked complete when the DELETE came is
        done by then, and is deleted. The jobs that read a done job being deleted
        fail first, saying why: a queued one at once, a running one once its
        tasks have stopped. A cancellation whose record cannot be saved is undone
        (:class:`StorageError`): a job reported cancelled never runs again after a restart.
        """
        table = self._table
        with table.lock:
            # A submission of this job under way, or its completion, decides which run there is to cancel or delete.
            table.lock.wait_for(lambda: key not in table.reserved)
            record = table.record(key)
            elsewhere = record.status in (QUEUED, RUNNING) and not self._keeper.holds(record)
            if record.status == RUNNING and not elsewhere:
                self._stop_running(key, None)
                table.lock.wait_for(lambda: table.records[key].status in FINISHED)
                return replace(table.records[key])
            if record.status in FINISHED and not delete_finished:
                return replace(record)
            if record.status == QUEUED and not elsewhere:
                # Out of the queue, and shown cancelled once that is stored.
                table.queue.remove(key)
            # Reserved while the store changes: a resubmission of its id, or a new reader, must not find it first.
            table.reserved.add(key)
        if elsewhere:
            return self._cancel_elsewhere(record)
        if record.status == QUEUED:
            return self._cancel_queued(record)
        try:
            self._fail_readers(record)
        except BaseException:
            with table.lock:
                table.reserved.discard(key)
                table.changed(key)
            raise
        self._delete_reserved(record)
        logger.info("job %s deleted", key)
        return None

    def _cancel_elsewhere(self, record: JobRecord) -> JobRecord:
        """Cancel a job another replica holds, reserved here: its record saved cancelled, if still as this replica last saw it.

        The replica that runs it sees the record change (:mod:`record_sync`) and
        stops its tasks and removes what they wrote; the answer does not wait for that.
        """
        key = record.key
        standing: JobRecord | None = record
        try:
            for _attempt in range(CANCEL_ATTEMPTS):
                # A running job stays its holder's until its tasks have stopped: its id is not submitted again before.
                cancelled = finish(record, CANCELLED, replica=record.replica if record.status == RUNNING else None)
                standing = self._keeper.save_final(cancelled)
                if standing is None or standing is cancelled or standing.status in FINISHED or self._keeper.holds(standing):
                    break
                # Changed meanwhile (taken over by a third replica): cancel it as it stands now.
                record = standing
        except BaseException:
            self._release(key)
            raise
        settled = self._settled(key, standing)
        if settled.status not in FINISHED:
            # This replica took it over meanwhile, or others kept changing it: cancelled as one of this replica's jobs.
            return self.cancel_or_delete(key, delete_finished=False) or settled
        logger.info("job %s, held by replica %s, is %s", key, record.replica, settled.status)
        return settled

    def _cancel_queued(self, queued: JobRecord) -> JobRecord:
        """Store the cancellation of a queued job taken out of the queue and reserved; queue it again if that fails."""
        table = self._table
        key = queued.key
        try:
            standing = self._keeper.save_final(finish(queued, CANCELLED))
        except BaseException:
            with table.lock:
                table.queue.append(key, queued.owner)
            self._release(key)
            raise
        # Another replica may have taken it over first, believing this one gone.
        return self._settled(key, standing)

    def _settled(self, key: JobKey, standing: JobRecord | None) -> JobRecord:
        """Take what stands in the store for a job reserved here, and release it; :class:`JobNotFound` if it was deleted meanwhile."""
        with self._table.lock:
            self._keeper.settle(key, standing)
        self._release(key)
        if standing is None:
            raise JobNotFound(f"job {key.job_id!r} was deleted")
        return replace(standing)

    def _release(self, key: JobKey) -> None:
        with self._table.lock:
            self._table.reserved.discard(key)
            self._table.changed(key)

    def _fail_readers(self, source: JobRecord) -> None:
        """Fail every job that reads ``source``, which is reserved for its deletion; return once none of them runs."""
        table = self._table
        error = {"code": SourceGone.code, "message": f"its source {source.job_id!r} was deleted before the job finished"}
        failed = []
        with table.lock:
            # Submissions that found the source before it was reserved are queued first, then failed below;
            # a reader being cancelled is cancelled first.
            table.lock.wait_for(
                lambda: not any(reads(key, work, source.key) for key, work in table.submitting.items()) and table.reserved.isdisjoint(table.readers(source.key))
            )
            readers = table.readers(source.key)
            for key in readers:
                record = table.records[key]
                if record.status == RUNNING:
                    # A reader its owner is cancelling ends cancelled, as that DELETE answers.
                    if key not in table.cancel_requested:
                        self._stop_running(key, error)
                    continue
                table.queue.remove(key)
                final = table.records[key] = finish(record, FAILED, error=error)
                # Reserved until saved: a resubmission of its id must not be overwritten by this record.
                table.reserved.add(key)
                failed.append(final)
                self._metrics.job_finished(FAILED, 0.0, record.work.app)
                table.changed(key)
            table.lock.wait_for(lambda: all(table.records[key].status in FINISHED for key in readers if key in table.records))
        for record in failed:
            logger.info("job %s failed: %s", record.key, error["message"])
            try:
                self._keeper.save_quietly(record)
            finally:
                with table.lock:
                    table.reserved.discard(record.key)
                    table.changed(record.key)

    def _stop_running(self, key: JobKey, error: dict[str, str] | None) -> None:
        """Stop a running job, which then ends cancelled (``error`` None) or failed with ``error``; called with the lock held."""
        table = self._table
        table.cancel_requested[key] = error
        # A job whose tasks are not sent yet sees the request before it sends them.
        if (writes := table.running.get(key)) is not None:
            writes.cancel()

    def _delete_reserved(self, record: JobRecord) -> None:
        """Remove a finished job's result and record.

        The job is reserved meanwhile: a submission of its id waits until it is
        gone, rather than finding it and then losing it to this deletion.
        """
        table = self._table
        try:
            self._store.delete(record.place)
            self._store.delete_record(record.record_name)
            with table.lock:
                del table.records[record.key]
        finally:
            with table.lock:
                table.reserved.discard(record.key)
                table.changed(record.key)

    def expire_results(self) -> None:
        """Every expiry interval, delete the finished jobs whose time is up, until the gateway stops.

        The times are in the records, so what a stopped gateway left is deleted by the next.
        A job that is queued or running never expires: it has no expiry time yet.
        """
        table = self._table
        while not table.stop_requested.wait(self._settings.expiry_interval):
            now = datetime.now(UTC)
            with table.lock:
                due = [key for key, record in table.records.items() if has_expired(record, now)]
            for key in due:
                try:
                    self._delete_if_expired(key, now)
                except StorageError as exc:
                    self._metrics.s3_errors.inc()
                    logger.error("expired job %s could not be deleted, trying again at the next sweep: %s", key, exc)
                except Exception:
                    logger.exception("expired job %s could not be deleted", key)

    def _delete_if_expired(self, key: JobKey, now: datetime) -> None:
        table = self._table
        with table.lock:
            table.lock.wait_for(lambda: key not in table.reserved)
            # Submitted again since the sweep looked, or deleted: then it is not this one's time.
            record = table.records.get(key)
            if record is None or not has_expired(record, now):
                return
            if table.readers(key) or any(reads(reader, work, key) for reader, work in table.submitting.items()):
                # Expiry never fails a job: a result that jobs read expires at the first sweep after they end.
                logger.info("job %s expired, and is kept while jobs read it", key)
                return
            table.reserved.add(key)
        if self._keeper.shared:
            try:
                current = self._keeper.read(key)
            except BaseException:
                self._release(key)
                raise
            if current != record:
                # Another replica submitted its id again, or deleted it, since this one read it: not this run's time.
                with table.lock:
                    self._keeper.settle(key, current)
                self._release(key)
                return
        self._delete_reserved(record)
        self._metrics.jobs_expired.inc()
        logger.info("job %s expired and was deleted", key, extra=job_event_fields(key.job_id, "expired", record.status))
