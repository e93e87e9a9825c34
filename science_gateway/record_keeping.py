"""A gateway's job records in the results store: read and trusted at start-up, saved at every change of status.

What this replica's last process was running when it stopped is recorded as
interrupted and its partial result removed: the work stopped with that
process. One whose result has its completion marker is done: its last record
save failed, or the process stopped between the two. What was queued is queued again.

On a store with conditional writes, replicas share the records: each save is
conditional on the version this replica last read or wrote, so that of two
replicas changing one record, one wins and the other finds :class:`RecordChanged`
and reads what won. Jobs another replica holds are loaded as they are: that
replica runs them, or, once its lease lapses, another takes them over (:mod:`record_sync`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from . import results_objects
from .apps.registry import Apps
from .job_errors import INTERRUPTED
from .job_records import DONE, FAILED, QUEUED, RUNNING, InvalidRecord, JobKey, JobRecord, finish, record_from_stored, trusted_records
from .job_table import JobTable
from .metrics import GatewayMetrics
from .results_store import RecordChanged, ResultsStore, StorageError, record_name

logger = logging.getLogger(__name__)

# Pauses between attempts to save a job's final record: a store that fails for a few seconds loses no ending.
SAVE_RETRY_PAUSES = (0.5, 2.0, 5.0)


class RecordKeeper:
    """The records of a job table, kept in its results store."""

    def __init__(self, table: JobTable, store: ResultsStore, metrics: GatewayMetrics, apps: Apps, replica: str) -> None:
        self._table = table
        self._store = store
        self._metrics = metrics
        self._apps = apps
        self.replica = replica
        # Whether saves are conditional (the store has conditional writes): set at start, before the load.
        self.shared = False
        # Each record's version as this replica last read or wrote it, by record name; guarded by the table's lock.
        self.versions: dict[str, str] = {}

    def holds(self, record: JobRecord) -> bool:
        """Whether this replica runs the job when it is queued or running: on a store of one replica, every job."""
        return not self.shared or record.replica == self.replica

    def load(self) -> None:
        """Fill the table with the stored records this service could have written; raise what reading them raised."""
        versions: dict[str, str] = {}
        trusted = trusted_records(self._store.read_records(versions), self._store.url_for, self._apps.schema_checks())
        with self._table.lock:
            self.versions = versions
        # Under its own name first, then the old name removed: a rename cut short is finished at the next start.
        for old_name, record in trusted.renames:
            if record is not None:
                self.save(record)
            self._store.delete_record(old_name)
        # This replica's jobs, and on a shared store those nobody holds (records from before replicas): this process takes them.
        records = [replace(record, replica=self.replica) if self.shared and record.replica is None else record for record in trusted.records]
        claimed = [record for record in records if record.replica == self.replica and self.shared and record.status == QUEUED]
        # Decided from the store before the table's lock is taken: a slow store must not hold up every request.
        records = [self.ended_with_its_process(record, INTERRUPTED) if record.status == RUNNING and self.holds(record) else record for record in records]
        was_running = {record.key for record in trusted.records if record.status == RUNNING}
        interrupted = [record for record in records if record.key in was_running and record.status == FAILED]
        completed = [record for record in records if record.key in was_running and record.status == DONE]
        table = self._table
        with table.lock:
            # A failed attempt may have filled these in part.
            table.records.clear()
            table.queue.clear()
            for record in records:
                if record.status == QUEUED and self.holds(record):
                    table.queue.append(record.key, record.owner)
                table.records[record.key] = record
        for record in interrupted:
            self.discard_result(record)
        for record in [*interrupted, *completed, *claimed]:
            if (standing := self.save_final(record)) is not record:
                self._settle(record.key, standing)
        # Once the load has succeeded: a load tried again after a failure counts each skipped record once.
        for reason in trusted.skipped:
            self._metrics.records_skipped.inc()
            logger.warning("%s; skipped it", reason)
        logger.info(
            "read %d job records (%d interrupted, %d completed, %d queued, %d renamed)",
            len(records), len(interrupted), len(completed), len(table.queue), len(trusted.renames),
        )  # fmt: skip

    def _settle(self, key: JobKey, standing: JobRecord | None) -> None:
        with self._table.lock:
            self.settle(key, standing)

    def settle(self, key: JobKey, standing: JobRecord | None) -> None:
        """Take the record another replica saved (None: deleted) for a job this process does not run; lock held."""
        table = self._table
        if key in table.queue:
            table.queue.remove(key)
        if standing is None:
            table.records.pop(key, None)
        else:
            table.records[key] = standing
            if standing.status == QUEUED and self.holds(standing):
                table.queue.append(key, standing.owner)
        table.changed(key)

    def ended_with_its_process(self, record: JobRecord, error: dict[str, str]) -> JobRecord:
        """How a job stored as running ended with the process that ran it: done if its result is complete, failed with ``error`` otherwise.

        Decided from the store, never from the record alone: deleting a complete result would lose it.
        """
        if self._store.is_complete(record.place):
            logger.warning("job %s is stored as running, and its result is complete: it is done", record.key)
            return finish(record, DONE, chunks_written=record.work.output.n_chunks)
        return finish(record, FAILED, error=error)

    def stored(self, record: JobRecord) -> dict[str, Any]:
        """The record as it is stored."""
        # Runner threads count chunks into the record while it is being copied.
        with self._table.lock:
            return record.to_stored()

    def save(self, record: JobRecord) -> None:
        """Save the record; on a shared store only if it is still as this replica last saw it, :class:`RecordChanged` otherwise."""
        name = record.record_name
        with self._table.lock:
            expected = self.versions.get(name, results_objects.CREATE) if self.shared else None
        version = self._store.write_record(name, self.stored(record), expected)
        if version is not None:
            with self._table.lock:
                self.versions[name] = version

    def read(self, key: JobKey) -> JobRecord | None:
        """The job's record as stored now (None if there is none, or none this service could have written), its version noted."""
        name = record_name(key.owner, key.job_id)
        with self._table.lock:
            known = self.versions.get(name)
        found = self._store.read_record(name)
        record = None if found is None else self.parse(name, found[0])
        with self._table.lock:
            # A save of this process meanwhile is newer than what was read.
            if self.versions.get(name) == known:
                if found is None:
                    self.versions.pop(name, None)
                else:
                    self.versions[name] = found[1]
        return record

    def parse(self, name: str, content: bytes) -> JobRecord | None:
        """The record stored as ``name``; None, logged, if this service could not have written it."""
        try:
            return record_from_stored(name, content, self._store.url_for, self._apps.schema_checks())
        except InvalidRecord as exc:
            self._metrics.records_skipped.inc()
            logger.warning("%s; left as it is", exc)
            return None

    def save_final(self, record: JobRecord) -> JobRecord | None:
        """Save a job's final record, trying again after a failure; :class:`StorageError` once every attempt failed.

        What stands in the store: the record, or, when another replica changed it first, theirs (None: deleted).
        """
        for pause in (*SAVE_RETRY_PAUSES, None):
            try:
                self.save(record)
                return record
            except RecordChanged:
                standing = self.read(record.key)
                if standing is not None and standing.to_stored() == self.stored(record):
                    # An attempt that failed on the way back had saved it.
                    return record
                logger.warning("job %s was changed by another replica: it stands %s", record.key, standing.status if standing else "deleted")
                return standing
            except StorageError:
                self._metrics.s3_errors.inc()
                if pause is None:
                    raise
                logger.warning("the final record of job %s could not be saved; trying again in %s s", record.key, pause, exc_info=True)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def save_quietly(self, record: JobRecord) -> JobRecord | None:
        """Save a job's final record as :meth:`save_final` does, and return what stands; a failure to save it at all is logged.

        The store then still says queued or running, which the next start reads
        as the store has it: a complete result done, anything else interrupted.
        """
        try:
            return self.save_final(record)
        except StorageError:
            logger.exception("the final record of job %s (%s) could not be saved; the next start decides it from the store", record.key, record.status)
            return record

    def discard_result(self, record: JobRecord) -> None:
        """Remove what a job that did not end done wrote: a half-written array must not stand where a result is expected."""
        try:
            self._store.delete(record.place)
        except StorageError:
            self._metrics.s3_errors.inc()
            logger.exception("the partial result of job %s could not be removed", record.key)
