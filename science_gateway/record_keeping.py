"""A gateway's job records in the results store: read and trusted at start-up, saved at every change of status.

What was running when the last process stopped is recorded as interrupted and
its partial result removed: the work stopped with that process. One whose
result has its completion marker is done: its last record save failed, or the
process stopped between the two. What was queued is queued again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .apps.registry import Apps
from .job_errors import INTERRUPTED
from .job_records import DONE, FAILED, QUEUED, RUNNING, JobRecord, finish, trusted_records
from .job_table import JobTable
from .metrics import GatewayMetrics
from .results_store import ResultsStore, StorageError

logger = logging.getLogger(__name__)

# Pauses between attempts to save a job's final record: a store that fails for a few seconds loses no ending.
SAVE_RETRY_PAUSES = (0.5, 2.0, 5.0)


class RecordKeeper:
    """The records of a job table, kept in its results store."""

    def __init__(self, table: JobTable, store: ResultsStore, metrics: GatewayMetrics, apps: Apps) -> None:
        self._table = table
        self._store = store
        self._metrics = metrics
        self._apps = apps

    def load(self) -> None:
        """Fill the table with the stored records this service could have written; raise what reading them raised."""
        trusted = trusted_records(self._store.read_records(), self._store.url_for, self._apps.schema_checks())
        # Under its own name first, then the old name removed: a rename cut short is finished at the next start.
        for old_name, record in trusted.renames:
            if record is not None:
                self.save(record)
            self._store.delete_record(old_name)
        # Decided from the store before the table's lock is taken: a slow store must not hold up every request.
        records = [self._ended_with_the_last_process(record) if record.status == RUNNING else record for record in trusted.records]
        was_running = {record.key for record in trusted.records if record.status == RUNNING}
        interrupted = [record for record in records if record.key in was_running and record.status != DONE]
        completed = [record for record in records if record.key in was_running and record.status == DONE]
        table = self._table
        with table.lock:
            # A failed attempt may have filled these in part.
            table.records.clear()
            table.queue.clear()
            for record in records:
                if record.status == QUEUED:
                    table.queue.append(record.key, record.owner)
                table.records[record.key] = record
        for record in interrupted:
            self.discard_result(record)
            self.save(record)
        for record in completed:
            self.save(record)
        # Once the load has succeeded: a load tried again after a failure counts each skipped record once.
        for reason in trusted.skipped:
            self._metrics.records_skipped.inc()
            logger.warning("%s; skipped it", reason)
        logger.info(
            "read %d job records (%d interrupted, %d completed, %d queued, %d renamed)",
            len(records), len(interrupted), len(completed), len(table.queue), len(trusted.renames),
        )  # fmt: skip

    def _ended_with_the_last_process(self, record: JobRecord) -> JobRecord:
        """How a job stored as running ended: done if its result is complete, interrupted otherwise.

        Decided from the store, never from the record alone: deleting a complete result would lose it.
        """
        if self._store.is_complete(record.place):
            logger.warning("job %s is stored as running, and its result is complete: it is done", record.key)
            return finish(record, DONE, chunks_written=record.work.output.n_chunks)
        return finish(record, FAILED, error=INTERRUPTED)

    def stored(self, record: JobRecord) -> dict[str, Any]:
        """The record as it is stored."""
        # Runner threads count chunks into the record while it is being copied.
        with self._table.lock:
            return record.to_stored()

    def save(self, record: JobRecord) -> None:
        self._store.write_record(record.record_name, self.stored(record))

    def save_final(self, record: JobRecord) -> None:
        """Save a job's final record, trying again after a failure; :class:`StorageError` once every attempt failed."""
        for pause in (*SAVE_RETRY_PAUSES, None):
            try:
                self.save(record)
                return
            except StorageError:
                self._metrics.s3_errors.inc()
                if pause is None:
                    raise
                logger.warning("the final record of job %s could not be saved; trying again in %s s", record.key, pause, exc_info=True)
                time.sleep(pause)

    def save_quietly(self, record: JobRecord) -> None:
        """Save a job's final record as :meth:`save_final` does; a failure to save it at all is logged.

        The store then still says queued or running, which the next start reads
        as the store has it: a complete result done, anything else interrupted.
        """
        try:
            self.save_final(record)
        except StorageError:
            logger.exception("the final record of job %s (%s) could not be saved; the next start decides it from the store", record.key, record.status)

    def discard_result(self, record: JobRecord) -> None:
        """Remove what a job that did not end done wrote: a half-written array must not stand where a result is expected."""
        try:
            self._store.delete(record.place)
        except StorageError:
            self._metrics.s3_errors.inc()
            logger.exception("the partial result of job %s could not be removed", record.key)
