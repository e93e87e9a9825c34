"""Every job of one gateway process in memory, under one condition: what the job manager, its runners and its deletions share.

Everything here is read and changed with ``lock`` held, and ``changed`` is
called at every change: it notes the change as an event of each job it names,
and wakes what waits on the table and the callers waiting for those jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, ItemsView, Iterator, KeysView, MutableMapping, ValuesView
from contextlib import contextmanager
from typing import Any

from .chunk_writes import ChunkWrites
from .fair_queue import FairQueue
from .hang_ups import Waiter
from .job_errors import JobNotFound
from .job_events import JobEvents
from .job_records import DONE, QUEUED, RUNNING, TAKING_SPACE, JobKey, JobRecord
from .job_work import JobWork, SourceResult


class JobRecords(MutableMapping[JobKey, JobRecord]):
    """The records by job, and each owner's: what one owner's listing, usage and limits look at, without the others'."""

    def __init__(self) -> None:
        self._records: dict[JobKey, JobRecord] = {}
        self._by_owner: dict[str | None, dict[JobKey, JobRecord]] = {}

    def __getitem__(self, key: JobKey) -> JobRecord:
        return self._records[key]

    def __setitem__(self, key: JobKey, record: JobRecord) -> None:
        self._records[key] = record
        self._by_owner.setdefault(key.owner, {})[key] = record

    def __delitem__(self, key: JobKey) -> None:
        del self._records[key]
        owners = self._by_owner[key.owner]
        del owners[key]
        if not owners:
            del self._by_owner[key.owner]

    def __iter__(self) -> Iterator[JobKey]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()
        self._by_owner.clear()

    # The dict's own, not MutableMapping's key-by-key ones: scans of every record run under the table's lock.
    def __contains__(self, key: object) -> bool:
        return key in self._records

    def get(self, key: JobKey, default: Any = None) -> Any:
        return self._records.get(key, default)

    def keys(self) -> KeysView[JobKey]:
        return self._records.keys()

    def values(self) -> ValuesView[JobRecord]:
        return self._records.values()

    def items(self) -> ItemsView[JobKey, JobRecord]:
        return self._records.items()

    def of_owner(self, owner: str | None) -> Collection[JobRecord]:
        """``owner``'s records (None: those of jobs without an owner)."""
        return self._by_owner.get(owner, {}).values()


class JobTable:
    """The jobs, their queue and their runs; the lock that guards them."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.records = JobRecords()
        self.queue: FairQueue[JobKey] = FairQueue()
        # Jobs being submitted or deleted: reserved, so that the two never interleave on one job.
        self.reserved: set[JobKey] = set()
        # The jobs being submitted, not yet queued: the limits count them as queued.
        self.submitting: dict[JobKey, JobWork] = {}
        # Every job a runner has taken; its tasks once they are sent to the cluster.
        self.running: dict[JobKey, ChunkWrites | None] = {}
        # Running jobs to stop, and the error each then ends with (None: cancelled by its owner).
        self.cancel_requested: dict[JobKey, dict[str, str] | None] = {}
        # Callers waiting for each job or following its events, woken at each change of its record (progress included).
        self.waiters: dict[JobKey, set[Waiter]] = {}
        # Each job's changes, numbered, for its followers.
        self.events = JobEvents()
        # Set when a graceful stop begins: the time by which running jobs must end.
        self.drain_deadline: float | None = None
        # Set at that deadline: what still runs is interrupted, and the runners and the expiry sweep end.
        self.stop_requested = threading.Event()

    def changed(self, *keys: JobKey) -> None:
        """Note the records of these jobs as events; wake what waits on the table and the callers waiting for these jobs."""
        self.lock.notify_all()
        for key in keys:
            self.progressed(key)

    def progressed(self, key: JobKey) -> None:
        """Note the job's record as an event and wake its callers: all a change of its progress needs, which nothing else waits on."""
        self.events.note(key, self.records.get(key))
        for waiter in self.waiters.get(key, ()):
            waiter.wake.set()

    @contextmanager
    def waiting(self, key: JobKey, waiter: Waiter) -> Iterator[None]:
        """``waiter`` woken at each change of the job's record while the block runs; called without the lock."""
        with self.lock:
            self.waiters.setdefault(key, set()).add(waiter)
        try:
            yield
        finally:
            with self.lock:
                waiting = self.waiters[key]
                waiting.discard(waiter)
                if not waiting:
                    del self.waiters[key]

    def record(self, key: JobKey) -> JobRecord:
        """The job's record; :class:`JobNotFound` if there is none."""
        record = self.records.get(key)
        if record is None:
            raise JobNotFound(f"no job {key.job_id!r}")
        return record

    def source(self, key: JobKey) -> SourceResult | str | None:
        """The done job ``key`` as a source; the status of one that is not done; None when there is none."""
        record = self.records.get(key)
        if record is None or key in self.reserved and record.status == DONE:
            # A done job being deleted is gone to a new reader.
            return None
        if record.status != DONE:
            return record.status
        return SourceResult(record.job_id, str(record.finished_at), record.work.output, record.place)

    def readers(self, source: JobKey) -> set[JobKey]:
        """The queued and running jobs that read ``source``."""
        # A job reads its own owner's results only.
        return {record.key for record in self.records.of_owner(source.owner) if record.status in (QUEUED, RUNNING) and reads(record.key, record.work, source)}

    def taking_space(self) -> list[JobRecord]:
        """The done, queued and running jobs: their results are stored or will be."""
        return [record for record in self.records.values() if record.status in TAKING_SPACE]

    def usage(self, owner: str | None) -> tuple[int, int]:
        """Bytes of ``owner``'s done, queued and running jobs, and how many jobs they are."""
        jobs = [record for record in self.records.of_owner(owner) if record.status in TAKING_SPACE]
        return sum(record.work.output.nbytes for record in jobs), len(jobs)


def reads(key: JobKey, work: JobWork, source: JobKey) -> bool:
    """Whether the job ``key`` of this work reads ``source``: a job reads its own owner's results only."""
    return key.owner == source.owner and any(run.job_id == source.job_id for run in work.sources.values())
