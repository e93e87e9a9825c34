"""A running job's last step, marking its result complete, against a DELETE that comes at that moment."""

import pytest

from helpers import random_job
from science_gateway.chunk_writes import JobCancelled
from science_gateway.job_records import RUNNING, JobRecord
from science_gateway.job_runner import JobRunner
from science_gateway.job_table import JobTable


def runner_of(table: JobTable) -> JobRunner:
    # Completing a job touches the table alone; the store's part is the callable it is given.
    return JobRunner(table, None, None, None, None, None, None)  # type: ignore[arg-type]


def running(table: JobTable) -> JobRecord:
    record = JobRecord("run-1", random_job(seed=1), "s3://bucket/run-1", status=RUNNING)
    table.records[record.key] = record
    table.running[record.key] = None
    return record


def test_a_cancel_requested_before_the_completion_ends_the_job_cancelled_and_nothing_is_marked() -> None:
    table = JobTable()
    key = running(table).key
    table.cancel_requested[key] = None
    marked = []
    with pytest.raises(JobCancelled):
        runner_of(table)._complete(key, lambda: marked.append(key))
    assert marked == [] and key not in table.reserved


def test_a_job_being_marked_complete_is_reserved_so_that_a_delete_waits_for_it_to_be_done() -> None:
    table = JobTable()
    key = running(table).key
    reserved_while_marking = []
    runner_of(table)._complete(key, lambda: reserved_while_marking.append(key in table.reserved))
    assert reserved_while_marking == [True]
