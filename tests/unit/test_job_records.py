"""Job records as stored: what this service wrote reads back, older forms included; anything else is skipped."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from science_gateway.job_parameters import RandomArraySpec
from science_gateway.job_records import InvalidRecord, JobRecord, has_expired, record_from_stored
from science_gateway.results_store import owner_prefix, place_for


def url_for(place: str) -> str:
    return f"s3://bucket/{place}"


def stored(record: JobRecord, **changes) -> bytes:
    return json.dumps({**record.to_stored(), **changes}).encode()


def alices(place: str) -> JobRecord:
    return JobRecord("run-7", RandomArraySpec(seed=7), url_for(place), owner="alice", place=place)


def test_a_record_from_before_owners_is_nobodys_with_its_result_at_the_job_id() -> None:
    content = json.loads(stored(JobRecord("run-7", RandomArraySpec(seed=7), url_for("run-7"))))
    del content["owner"], content["place"]

    record = record_from_stored("run-7.json", json.dumps(content).encode(), url_for)

    assert (record.owner, record.place) == (None, "run-7")


def test_a_record_from_before_shards_is_one_object_per_chunk_and_a_sharded_one_keeps_its_shards() -> None:
    content = json.loads(stored(JobRecord("run-7", RandomArraySpec(seed=7), url_for("run-7"))))
    del content["spec"]["shards"]
    assert record_from_stored("run-7.json", json.dumps(content).encode(), url_for).spec.shards is None

    sharded = JobRecord("run-8", RandomArraySpec(seed=8, shards=(500, 1000)), url_for("run-8"))
    assert record_from_stored("run-8.json", stored(sharded), url_for).spec.shards == (500, 1000)


def test_a_place_is_never_empty() -> None:
    assert JobRecord("run-7", RandomArraySpec(seed=7), url_for("run-7"), place="").place == "run-7"


@pytest.mark.parametrize("place", ["run-7", ".users/alice/run-7", "alice/run-7"])
def test_an_owners_record_keeps_its_owner_and_place_in_each_layout_the_service_wrote(place: str) -> None:
    record = record_from_stored("run-7.json", stored(alices(place)), url_for)
    assert (record.owner, record.place) == ("alice", place)


@pytest.mark.parametrize(
    "name, content",
    [
        ("run-7.json", b"{not json"),
        ("run-7.json", b"[]"),
        ("run-7.json", stored(alices("run-7"), spec={"seed": 7})),
        ("run-7.json", stored(alices("run-7"), spec={"seed": 7, "shape": [10, 10], "chunks": [20, 20], "dtype": "float32"})),
        ("run-7.json", stored(alices("run-7"), status="finished")),
        ("run-7.json", stored(alices("run-7"), unknown_field=1)),
        ("run-7.json", stored(alices("run-7"), submitted_at=7)),
        ("run-7.json", stored(alices("run-7"), error="failed")),
        ("run-7.json", stored(alices("run-7"), owner=["alice"])),
        ("other-run.json", stored(alices("run-7"))),
        ("nested/run-7.json", stored(alices("run-7"))),
        (".hidden.json", stored(alices("run-7"), job_id=".hidden")),
    ],
)
def test_a_malformed_record_is_refused(name: str, content: bytes) -> None:
    with pytest.raises(InvalidRecord, match=name):
        record_from_stored(name, content, url_for)


@pytest.mark.parametrize(
    "changes",
    [
        {"place": "bobs-run"},  # a DELETE would remove another job's result
        {"place": ".jobs"},  # ... or every record
        {"place": ".users/bob/run-7"},
        {"url": "s3://another-bucket/run-7"},  # a preview would read another array
        {"owner": "bob"},  # bob's record of alice's result
    ],
)
def test_a_record_naming_another_jobs_place_or_url_is_refused(changes: dict) -> None:
    with pytest.raises(InvalidRecord, match="not one this gateway writes"):
        record_from_stored("run-7.json", stored(alices(".users/alice/run-7"), **changes), url_for)


@pytest.mark.parametrize("name", [".jobs", "..", ".", "a/b", "a_2fb", "service:science-gateway", "élise", "../.jobs"])
def test_no_owners_prefix_is_the_records_prefix_or_a_job_id_or_more_than_one_segment(name: str) -> None:
    prefix = owner_prefix(name)
    owners, segment = prefix.split("/")
    assert owners == ".users" and segment not in ("", ".", "..", ".jobs") and not segment.startswith(".")
    assert place_for("run-7", name, per_user=True) == f"{prefix}/run-7"


def test_owners_prefixes_are_one_to_one() -> None:
    names = ["a/b", "a_2fb", "a.b", "a_2eb", "A", "a", "a b", "a_20b", "_", "__5f"]
    assert len({owner_prefix(name) for name in names}) == len(names)


def test_a_record_with_an_expiry_time_that_is_not_a_time_is_refused() -> None:
    kept = JobRecord("run-9", RandomArraySpec(seed=9), url_for("run-9"), status="done", ttl=60, expires_at="2026-11-28T01:00:00+00:00")
    assert record_from_stored("run-9.json", stored(kept), url_for).expires_at == kept.expires_at
    for changes in ({"expires_at": "tomorrow"}, {"expires_at": "2026-11-28T01:00:00"}, {"ttl": 0}, {"ttl": "60"}):
        with pytest.raises(InvalidRecord, match="expiry"):
            record_from_stored("run-9.json", stored(kept, **changes), url_for)


def test_only_a_finished_job_past_its_time_has_expired() -> None:
    now = datetime.now(UTC)
    past = (now - timedelta(seconds=1)).isoformat()
    record = JobRecord("run-9", RandomArraySpec(seed=9), url_for("run-9"), ttl=1, expires_at=past)
    assert [has_expired(replace(record, status=status), now) for status in ("queued", "running", "done", "failed", "cancelled")] == [
        False, False, True, True, True,
    ]
    assert not has_expired(replace(record, status="done", expires_at=(now + timedelta(seconds=1)).isoformat()), now)
    assert not has_expired(replace(record, status="done", expires_at=None), now)
