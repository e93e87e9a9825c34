"""Job records as stored: those written before owners and per-user places still read."""

from jobs import JobRecord
from random_array_job import RandomArraySpec


def test_a_record_from_before_owners_is_nobodys_with_its_result_at_the_job_id() -> None:
    stored = JobRecord("run-7", RandomArraySpec(seed=7), "s3://bucket/run-7").to_stored()
    del stored["owner"], stored["place"]

    record = JobRecord.from_stored(stored)

    assert (record.owner, record.place) == (None, "run-7")


def test_a_place_is_never_empty() -> None:
    assert JobRecord("run-7", RandomArraySpec(seed=7), "s3://bucket/run-7", place="").place == "run-7"


def test_an_owners_record_keeps_its_owner_and_place() -> None:
    stored = JobRecord("run-7", RandomArraySpec(seed=7), "s3://b/alice/run-7", owner="alice", place="alice/run-7").to_stored()
    assert JobRecord.from_stored(stored).to_json()["owner"] == "alice"
    assert JobRecord.from_stored(stored).place == "alice/run-7"
