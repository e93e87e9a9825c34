"""Replicas on one results store keep each other's jobs in view, and take over the jobs of one that died.

Every renewal of its lease (:mod:`replicas`), a replica on a store with
conditional writes lists the job records with their versions and reads those
another replica changed: jobs submitted there, their status as they run,
cancellations and deletions made there. A job it runs that another replica
cancelled (or took over as interrupted) is stopped here, and its result removed.

A job held by a replica that is not alive (its lease lapsed, or it removed its
lease at a graceful stop) is taken over, each by one replica, the first whose
conditional save of it succeeds: a queued job is queued here, a running one
fails as interrupted (its tasks stopped with its replica, or can no longer be
told to stop) and what it wrote is removed.

On a store without conditional writes there is one replica: another replica's
lease seen there is reported in the log and by ``/readyz``, never acted on.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import replace

from .job_errors import REPLICA_LOST
from .job_records import FAILED, FINISHED, QUEUED, RUNNING, JobKey, JobRecord
from .job_table import JobTable
from .metrics import GatewayMetrics
from .record_keeping import RecordKeeper
from .replicas import Replicas
from .results_store import ResultsStore, StorageError

logger = logging.getLogger(__name__)


class RecordSync:
    """One replica's view of the others: run :meth:`keep_in_view` in a thread of its own."""

    def __init__(self, table: JobTable, keeper: RecordKeeper, replicas: Replicas, store: ResultsStore, metrics: GatewayMetrics) -> None:
        self._table = table
        self._keeper = keeper
        self._replicas = replicas
        self._store = store
        self._metrics = metrics
        # Other replicas seen on a store without conditional writes, where there must be one.
        self.intruders: set[str] = set()

    def keep_in_view(self, stopping: threading.Event) -> None:
        """Renew the lease (in a thread of its own) and look at the others every renewal interval until ``stopping`` is set.

        Apart: a look that reads many records or saves slowly must not let this replica's own lease lapse.
        """
        threading.Thread(target=self._renew, args=(stopping,), name="replica-lease", daemon=True).start()
        while not stopping.wait(self._replicas.renew_interval):
            try:
                self.look()
            except StorageError as exc:
                self._metrics.s3_errors.inc()
                logger.error("the other replicas could not be looked at: %s", exc)
            except Exception:
                logger.exception("the other replicas could not be looked at")

    def _renew(self, stopping: threading.Event) -> None:
        while not stopping.wait(self._replicas.renew_interval):
            try:
                self._replicas.renew_and_observe()
            except StorageError as exc:
                self._metrics.s3_errors.inc()
                logger.error("the lease of this replica could not be renewed: %s", exc)
            except Exception:
                logger.exception("the lease of this replica could not be renewed")

    def look(self) -> None:
        """One round: read what the others changed, take over what the dead held."""
        replicas = self._replicas
        if not self._keeper.shared:
            intruders = replicas.others_alive()
            if intruders - self.intruders:
                logger.error(
                    "replica %s also runs on this results store, which has no conditional writes: run one replica "
                    "(replicas: 1, strategy Recreate), or use a store with conditional writes", ", ".join(sorted(intruders)),
                )  # fmt: skip
            self.intruders = intruders
            return
        lapsed = replicas.lapsed()
        if not (replicas.others_alive() or lapsed or replicas.take_departed() or self._held_by_others()):
            # Alone on the store: nobody else changes its records.
            return
        self.read_changes()
        if self._table.drain_deadline is None:
            self.take_over()
            for replica in lapsed:
                replicas.forget(replica)

    def _held_by_others(self) -> bool:
        with self._table.lock:
            return any(record.status in (QUEUED, RUNNING) and not self._keeper.holds(record) for record in self._table.records.values())

    def read_changes(self) -> None:
        """Read every record another replica wrote, created or deleted since this one last saw it."""
        keeper = self._keeper
        with self._table.lock:
            known = dict(keeper.versions)
        listed = self._store.record_versions()
        for name, version in listed.items():
            if known.get(name) == version:
                continue
            try:
                found = self._store.read_record(name)
            except StorageError as exc:
                # One key the client cannot read (an empty path segment) must not stop every other change being seen.
                logger.warning("job record %r could not be read: %s", name, exc)
                found = None
            stored = None if found is None else keeper.parse(name, found[0])
            if stored is None:
                # Read once, and left as it is: a record this version cannot use is neither a job nor a deletion.
                with self._table.lock:
                    if keeper.versions.get(name) == known.get(name) and not any(record.record_name == name for record in self._table.records.values()):
                        keeper.versions[name] = version
                continue
            self._apply(name, known.get(name), version if found is None else found[1], stored)
        for name in known.keys() - listed.keys():
            self._apply(name, known[name], None, None)

    def _apply(self, name: str, seen: str | None, version: str | None, stored: JobRecord | None) -> None:
        """Take another replica's change of one record, unless this process changed it since the listing."""
        table = self._table
        keeper = self._keeper
        with table.lock:
            key = stored.key if stored is not None else next((record.key for record in table.records.values() if record.record_name == name), None)
            # Saved here since (its version moved), or being submitted or deleted here: this process decides it.
            if keeper.versions.get(name) != seen or key is None or key in table.reserved:
                return
            if key in table.running:
                # Its version left as this replica saved it: the runner's final save then finds the change and reads it.
                if (stored is None or stored.status in FINISHED or not keeper.holds(stored)) and key not in table.cancel_requested:
                    self._stop_here(key, stored)
                return
            if version is None:
                keeper.versions.pop(name, None)
            else:
                keeper.versions[name] = version
            keeper.settle(key, stored)

    def _stop_here(self, key: JobKey, stored: JobRecord | None) -> None:
        """Stop a job running here that another replica ended: its runner then finds the record changed and leaves it as stored."""
        table = self._table
        logger.info("job %s was ended by another replica (%s); its tasks here are stopped", key, stored.status if stored else "deleted")
        table.cancel_requested[key] = stored.error if stored is not None else None
        if (writes := table.running.get(key)) is not None:
            writes.cancel()

    def take_over(self) -> None:
        """Take over every queued and running job whose replica is not alive, each only if no other replica did first."""
        replicas = self._replicas
        with self._table.lock:
            orphans = [
                record for record in self._table.records.values()
                if record.status in (QUEUED, RUNNING) and not replicas.is_alive(record.replica) and record.key not in self._table.reserved
            ]  # fmt: skip
        # In no two replicas' order: replicas taking over one stopped replica's jobs seldom race for the same one.
        random.shuffle(orphans)
        for record in orphans:
            if record.status == QUEUED:
                taken = replace(record, replica=replicas.id)
            else:
                # Its last save may have failed after its result was whole: then it is done.
                taken = self._keeper.ended_with_its_process(record, REPLICA_LOST)
            standing = self._keeper.save_final(taken)
            if standing is taken:
                if taken.status == FAILED:
                    self._keeper.discard_result(record)
                logger.warning("job %s, held by %s, taken over: %s", record.key, record.replica or "no replica", taken.status)
            with self._table.lock:
                self._keeper.settle(record.key, standing)
