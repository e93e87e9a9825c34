"""A job's changes as numbered events (science_gateway/job_events.py), on a job table without servers."""

import threading
from dataclasses import replace

import pytest

from helpers import random_job, wait_for
from science_gateway import job_events
from science_gateway.hang_ups import Waiter
from science_gateway.job_events import JobEvents, follow
from science_gateway.job_records import CANCELLED, DONE, QUEUED, RUNNING, JobRecord, finish, now
from science_gateway.job_table import JobTable


def queued(table: JobTable, job_id: str = "job-1") -> JobRecord:
    record = JobRecord(job_id, random_job(seed=1), f"s3://bucket/{job_id}")
    with table.lock:
        table.records[record.key] = record
        table.changed(record.key)
    return record


def change(table: JobTable, record: JobRecord, **changes) -> JobRecord:
    """The record changed as the job manager changes it: in the table, then noted."""
    with table.lock:
        if "status" in changes and changes["status"] not in (QUEUED, RUNNING):
            new = finish(record, changes.pop("status"), **changes)
            table.records[record.key] = new
        else:
            new = record
            for name, value in changes.items():
                setattr(new, name, value)
        table.changed(record.key)
    return new


def statuses(events) -> list[tuple[str, int]]:
    return [(event.job["status"], event.job["progress"]["chunks_written"]) for event in events]


def test_each_change_is_one_event_with_a_larger_id_and_a_change_of_nothing_is_none() -> None:
    table = JobTable()
    record = queued(table)
    change(table, record, status=RUNNING, started_at=now())
    change(table, record, chunks_written=40)
    change(table, record, chunks_written=40)  # noted again, unchanged
    final = change(table, record, status=DONE, chunks_written=100)

    with table.lock:
        events = table.events.after(record.key, final, None)
    assert statuses(events) == [(QUEUED, 0), (RUNNING, 0), (RUNNING, 40), (DONE, 100)]
    ids = [event.id for event in events]
    assert ids == sorted(set(ids)), "strictly increasing"
    assert [event.final for event in events] == [False, False, False, True]
    with table.lock:
        assert table.events.after(record.key, final, ids[1]) == events[2:]
        assert table.events.after(record.key, final, ids[-1]) == []


def test_the_events_of_a_records_own_times_have_those_times_as_ids_so_a_restart_gives_the_end_the_same_id() -> None:
    table = JobTable()
    record = queued(table)
    change(table, record, status=RUNNING, started_at=now())
    final = change(table, record, status=DONE, chunks_written=100)
    with table.lock:
        events = table.events.after(record.key, final, None)

    # Another process, which loaded the final record from the store: its one event is the end, under the same id.
    (loaded,) = JobEvents().after(final.key, replace(final), None)
    assert loaded.id == events[-1].id == job_events._microseconds(final.finished_at)
    assert events[0].id == job_events._microseconds(record.submitted_at)


def test_a_job_submitted_again_under_its_id_has_its_own_events_alone() -> None:
    table = JobTable()
    first = queued(table)
    cancelled = change(table, first, status=CANCELLED)
    again = queued(table)
    with table.lock:
        events = table.events.after(again.key, again, None)
    assert statuses(events) == [(QUEUED, 0)] and events[0].job["submitted_at"] == again.submitted_at
    assert cancelled.submitted_at != again.submitted_at


def test_the_oldest_finished_jobs_keep_their_final_event_alone() -> None:
    events = JobEvents(kept_finished=1)
    records = []
    for job_id in ("old", "new"):
        record = JobRecord(job_id, random_job(seed=1), f"s3://bucket/{job_id}")
        events.note(record.key, record)
        records.append(finish(record, DONE))
        events.note(record.key, records[-1])
    old, new = records
    (end,) = events.after(old.key, old, None)
    assert statuses([end]) == [(DONE, 0)] and end.id == job_events._microseconds(old.finished_at)
    assert statuses(events.after(new.key, new, None)) == [(QUEUED, 0), (DONE, 0)]


def followed(table: JobTable, record: JobRecord, last_id=None) -> tuple[list, threading.Thread, Waiter, list]:
    """Follow the job in a thread; what it received, the thread, its waiter, and what it raised."""
    received: list = []
    raised: list = []
    waiter = Waiter()

    def read() -> None:
        try:
            received.extend(follow(table, record.key, last_id, waiter))
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to fail on
            raised.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return received, thread, waiter, raised


def ended(thread: threading.Thread, raised: list) -> bool:
    thread.join(10)
    assert raised == []
    return not thread.is_alive()


def test_a_follower_gets_each_change_then_the_end_and_stops_following() -> None:
    table = JobTable()
    record = queued(table)
    received, thread, _, raised = followed(table, record)
    wait_for(lambda: received, 10, "the follower's first event")
    change(table, record, status=RUNNING, started_at=now())
    change(table, record, chunks_written=50)
    change(table, record, status=DONE, chunks_written=100)
    assert ended(thread, raised)
    # A keep-alive (None) may come between them only after KEEP_ALIVE_SECONDS of silence.
    assert statuses(event for event in received if event is not None) == [(QUEUED, 0), (RUNNING, 0), (RUNNING, 50), (DONE, 100)]
    assert table.waiters == {}, "the follower's waiter is gone with it"


def test_a_silent_job_gets_keep_alives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_events, "KEEP_ALIVE_SECONDS", 0.01)
    table = JobTable()
    record = queued(table)
    stream = follow(table, record.key, None, Waiter())
    assert statuses([next(stream)]) == [(QUEUED, 0)]
    assert [next(stream), next(stream)] == [None, None]
    stream.close()
    assert table.waiters == {}


@pytest.mark.parametrize("ending", ["deleted", "stopping", "hung up"])
def test_a_follower_stops_when_the_job_is_deleted_the_gateway_stops_with_it_queued_or_the_caller_hangs_up(ending: str) -> None:
    table = JobTable()
    record = queued(table)
    received, thread, waiter, raised = followed(table, record)
    wait_for(lambda: received, 10, "the follower's first event")
    with table.lock:
        if ending == "deleted":
            del table.records[record.key]
        elif ending == "stopping":
            table.drain_deadline = 0.0
        table.changed(record.key)
    if ending == "hung up":
        waiter.hang_up()
    assert ended(thread, raised)
    assert statuses(received) == [(QUEUED, 0)]


def test_a_running_job_is_followed_on_while_the_gateway_stops() -> None:
    table = JobTable()
    record = queued(table)
    change(table, record, status=RUNNING, started_at=now())
    received, thread, _, raised = followed(table, record)
    wait_for(lambda: len(received) == 2, 10, "the follower's first events")
    with table.lock:
        table.drain_deadline = 0.0
        table.changed(record.key)
    change(table, record, status=DONE, chunks_written=100)
    assert ended(thread, raised)
    assert statuses(received) == [(QUEUED, 0), (RUNNING, 0), (DONE, 100)]


def test_a_follower_whose_last_id_is_past_the_end_is_told_nothing_and_stops_when_the_job_ends() -> None:
    table = JobTable()
    record = queued(table)
    received, thread, waiter, raised = followed(table, record, last_id=10**16 - 1)
    wait_for(lambda: record.key in table.waiters, 10, "the follower to wait")
    change(table, record, status=RUNNING, started_at=now())
    change(table, record, status=DONE, chunks_written=100)
    assert ended(thread, raised)
    assert received == []


def test_a_follower_of_a_run_stops_when_its_id_is_submitted_again() -> None:
    table = JobTable()
    first = queued(table)
    received, thread, waiter, raised = followed(table, first)
    wait_for(lambda: received, 10, "the follower's first event")
    with table.lock:
        # Cancelled and submitted again before the follower woke: the record it finds is another run's.
        table.records[first.key] = finish(first, CANCELLED)
        again = JobRecord(first.job_id, random_job(seed=2), first.url, submitted_at=now())
        table.records[first.key] = again
        table.changed(first.key)
    assert ended(thread, raised)
    assert statuses(received) == [(QUEUED, 0)]


def test_a_job_of_many_tasks_keeps_its_latest_progress_past_the_kept_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_events, "KEPT_PROGRESS_EVENTS", 3)
    table = JobTable()
    record = queued(table)
    change(table, record, status=RUNNING, started_at=now())
    for written in range(10, 60, 10):
        change(table, record, chunks_written=written)
    final = change(table, record, status=DONE, chunks_written=100)
    with table.lock:
        events = table.events.after(record.key, final, None)
    assert statuses(events) == [(QUEUED, 0), (RUNNING, 0), (RUNNING, 10), (RUNNING, 20), (RUNNING, 50), (DONE, 100)]
    ids = [event.id for event in events]
    assert ids == sorted(set(ids))
