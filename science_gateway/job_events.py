"""Each job's changes as numbered events, for callers who follow a job live (``GET /jobs/<id>/events``).

The job table notes every change of a record here (:meth:`JobEvents.note`);
a caller following the job gets each event once, in order, and one who lost
its connection resumes after the last id it saw (Server-Sent Events'
``Last-Event-ID``) without a gap or a repeat.

An event's id is the time of its change in microseconds since the epoch,
made one more than the previous event's when two changes fall in one
microsecond: ids increase over a job's events, and a later process's ids are
larger than an earlier one's. The events of a record's own times take those
times (``submitted_at`` for ``queued``, ``started_at`` for ``running``,
``finished_at`` for the end), so the final event of a job has the same id in
every process that loads its record: a caller resuming after that id across a
restart is told the stream is over rather than shown the end twice.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .hang_ups import Waiter
from .job_records import FINISHED, QUEUED, RUNNING, JobKey, JobRecord

if TYPE_CHECKING:
    from .job_table import JobTable

# Finished jobs whose every event is kept, the most recently finished: a caller who lost its
# connection near a job's end still gets the events it missed. Of the others, the end alone,
# made from the record when asked for: memory holds the events of unfinished jobs and of these.
KEPT_FINISHED_JOBS = 100
# Progress events kept of one run: past them, each new one replaces the last, so that a job of
# thousands of tasks keeps a few dozen records in memory, not thousands.
KEPT_PROGRESS_EVENTS = 32
# The longest a follower goes without a byte: a comment then, which proxies and load
# balancers (idle timeouts of 30-60 s and more) see as traffic, and which finds a caller gone.
KEEP_ALIVE_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class JobEvent:
    id: int
    # The record as ``JobRecord.to_json`` gives it at this change.
    job: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.job["status"] in FINISHED


def _is_progress(event: JobEvent) -> bool:
    return event.job["status"] == RUNNING and event.job["progress"]["chunks_written"] > 0


def _microseconds(stamp: str) -> int:
    moment = datetime.fromisoformat(stamp)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _stamp(record: JobRecord) -> int:
    """The time of the record's latest change, as an event id: its own time where the record has one."""
    if record.status in FINISHED and record.finished_at:
        return _microseconds(record.finished_at)
    if record.status == RUNNING and record.chunks_written == 0 and record.started_at:
        return _microseconds(record.started_at)
    if record.status == QUEUED:
        return _microseconds(record.submitted_at)
    return time.time_ns() // 1000


class JobEvents:
    """The events of each job this process has seen change or has been asked about; used with the job table's lock held."""

    def __init__(self, kept_finished: int = KEPT_FINISHED_JOBS) -> None:
        self._events: dict[JobKey, list[JobEvent]] = {}
        self._kept_finished = kept_finished
        # Finished jobs with every event kept, oldest first.
        self._finished: OrderedDict[JobKey, None] = OrderedDict()

    def note(self, key: JobKey, record: JobRecord | None) -> None:
        """The job's record as it is now (None: it is gone); an event if it changed since the last one."""
        if record is None:
            self._events.pop(key, None)
            self._finished.pop(key, None)
            return
        job = record.to_json()
        events = self._events.get(key)
        if events and events[-1].job == job:
            return
        if not events or events[0].job["submitted_at"] != job["submitted_at"]:
            # A new job under this id (a failed or cancelled one submitted again): its own events alone.
            events = self._events[key] = []
            self._finished.pop(key, None)
        event = JobEvent(max(_stamp(record), events[-1].id + 1) if events else _stamp(record), job)
        if _is_progress(event) and sum(map(_is_progress, events)) >= KEPT_PROGRESS_EVENTS and _is_progress(events[-1]):
            # A job of many tasks: its latest progress takes the place of the one before, which it says more than.
            events[-1] = event
        else:
            events.append(event)
        if event.final:
            self._finished[key] = None
            while len(self._finished) > self._kept_finished:
                # Its final event is made again from its record when asked for, under the same id: nothing to keep.
                oldest, _ = self._finished.popitem(last=False)
                del self._events[oldest]

    def after(self, key: JobKey, record: JobRecord, last_id: int | None) -> list[JobEvent]:
        """The job's events after ``last_id`` (None: all that are kept); its current state at least, when there is nothing before it."""
        if key not in self._events:
            if record.status in FINISHED:
                # Finished before this process or long ago: its end, made from the record, is all there is.
                end = JobEvent(_stamp(record), record.to_json())
                return [end] if last_id is None or end.id > last_id else []
            # A queued record loaded from the store, unchanged since: its current state is its first event here.
            self.note(key, record)
        return [event for event in self._events[key] if last_id is None or event.id > last_id]


def follow(table: JobTable, key: JobKey, last_id: int | None, waiter: Waiter) -> Generator[JobEvent | None]:
    """The job's events after ``last_id`` as they happen, and None each time ``KEEP_ALIVE_SECONDS`` pass without one.

    Follows one run of the job, the one there is when it begins. Ends after
    its final event, or once it is finished whatever ``last_id`` said; when
    its record is gone (deleted) or is another run's (its id submitted again);
    when the caller hangs up; and, for a queued job, when the gateway begins to
    stop: it runs in the next process, where the caller resumes.
    """
    run = None
    with table.waiting(key, waiter):
        while True:
            waiter.wake.clear()
            with table.lock:
                record = table.records.get(key)
                if record is not None and run is not None and record.submitted_at != run:
                    record = None
                events = table.events.after(key, record, last_id) if record is not None else []
            if record is None:
                return
            run = record.submitted_at
            for event in events:
                yield event
                last_id = event.id
                if event.final:
                    return
            # A caller whose Last-Event-ID is past the end (a clock set back, or a made-up id) is told nothing more.
            stopping = record.status == QUEUED and table.drain_deadline is not None
            if record.status in FINISHED or stopping or waiter.gone:
                return
            if not waiter.wake.wait(KEEP_ALIVE_SECONDS):
                yield None
