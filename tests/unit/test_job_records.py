"""Job records as stored: what this service wrote reads back, older forms included; anything else is skipped."""

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from helpers import random_job
from science_gateway.apps.base import Output
from science_gateway.apps.registry import load_apps
from science_gateway.job_parameters import differences
from science_gateway.job_records import InvalidRecord, JobKey, JobRecord, has_expired, record_from_stored, trusted_records
from science_gateway.job_work import JobWork, SourceRun
from science_gateway.results_store import owner_prefix, place_for, record_name


def url_for(place: str) -> str:
    return f"s3://bucket/{place}"


def stored(record: JobRecord, **changes) -> bytes:
    return json.dumps({**record.to_stored(), **changes}).encode()


def from_before_apps(record: JobRecord, **changes) -> bytes:
    """The record as this service stored it before there were apps: the random array's parameters as its "spec"."""
    content = {key: value for key, value in record.to_stored().items() if key != "work"}
    return json.dumps({**content, "spec": record.work.parameters, **changes}).encode()


SCHEMAS = load_apps().schema_checks()


def alices(place: str) -> JobRecord:
    return JobRecord("run-7", random_job(seed=7), url_for(place), owner="alice", place=place)


WORK = alices("run-7").work.to_stored()


def test_a_record_from_before_owners_is_nobodys_with_its_result_at_the_job_id() -> None:
    content = json.loads(stored(JobRecord("run-7", random_job(seed=7), url_for("run-7"))))
    del content["owner"], content["place"]

    record = record_from_stored("run-7.json", json.dumps(content).encode(), url_for)

    assert (record.owner, record.place) == (None, "run-7")


def test_a_record_from_before_shards_is_one_object_per_chunk_and_a_sharded_one_keeps_its_shards() -> None:
    content = json.loads(from_before_apps(JobRecord("run-7", random_job(seed=7), url_for("run-7"))))
    del content["spec"]["shards"]
    assert record_from_stored("run-7.json", json.dumps(content).encode(), url_for).work.output.shards is None

    sharded = JobRecord("run-8", random_job(seed=8, shards=(500, 1000)), url_for("run-8"))
    assert record_from_stored("run-8.json", stored(sharded), url_for).work.output.shards == (500, 1000)


def test_a_record_reads_back_as_it_was_and_one_from_before_apps_is_a_random_array() -> None:
    record = JobRecord("run-7", random_job(seed=7, shape=(300, 200), chunks=(100, 100)), url_for("run-7"))
    assert record_from_stored("run-7.json", stored(record), url_for, SCHEMAS) == record

    before = record_from_stored("run-7.json", from_before_apps(record), url_for, SCHEMAS)
    assert (before.work.app, before.work.app_version) == ("random-array", "1.0.0")
    assert before == record, "the same job, as the gateway plans it today"


def test_a_record_of_an_app_not_offered_loads_and_one_whose_parameters_its_app_refuses_does_not() -> None:
    gone = JobWork("histogram", "0.1.0", {"bins": 10}, Output((1, 10), (1, 10), "int64"), {"source": SourceRun("run-1", "2026-12-01T00:00:00+00:00")})
    record = JobRecord("run-7", gone, url_for("run-7"))
    assert record_from_stored("run-7.json", stored(record), url_for, SCHEMAS).work == gone, "listed and deleted like any other"

    refused = JobRecord("run-8", JobWork("random-array", "1.0.0", {"seed": -1}, Output((10, 10), (10, 10), "float32")), url_for("run-8"))
    with pytest.raises(InvalidRecord, match="its parameters do not fit"):
        record_from_stored("run-8.json", stored(refused), url_for, SCHEMAS)


def test_a_place_is_never_empty() -> None:
    assert JobRecord("run-7", random_job(seed=7), url_for("run-7"), place="").place == "run-7"


@pytest.mark.parametrize("place", ["run-7", ".users/alice/run-7", "alice/run-7"])
@pytest.mark.parametrize("name", ["run-7.json", ".users/alice/run-7.json"])
def test_an_owners_record_keeps_its_owner_and_place_in_each_layout_the_service_wrote(place: str, name: str) -> None:
    record = record_from_stored(name, stored(alices(place)), url_for)
    assert (record.owner, record.place, record.key) == ("alice", place, JobKey("alice", "run-7"))
    assert record.record_name == ".users/alice/run-7.json", "its own name, whatever it was stored under"


def test_each_owner_has_ids_of_their_own_in_places_and_record_names_that_never_meet() -> None:
    names = {record_name(owner, "my-first-job") for owner in (None, "alice", "bob", "a/b", "a_2fb")}
    places = {place_for("my-first-job", owner) for owner in (None, "alice", "bob", "a/b", "a_2fb")}
    assert len(names) == len(places) == 5
    assert record_name(None, "my-first-job") == "my-first-job.json" and place_for("my-first-job", None) == "my-first-job"
    assert record_name("alice", "my-first-job") == ".users/alice/my-first-job.json"


def test_a_record_under_another_owners_name_is_refused() -> None:
    with pytest.raises(InvalidRecord, match="job_id"):
        record_from_stored(".users/bob/run-7.json", stored(alices(".users/alice/run-7")), url_for)


def test_a_record_of_an_owner_whose_name_has_no_utf8_form_is_refused_not_raised() -> None:
    with pytest.raises(InvalidRecord, match="owner"):
        record_from_stored("run-7.json", stored(alices("run-7"), owner="\ud800"), url_for)


def test_records_under_their_old_names_are_renamed_and_a_rename_cut_short_is_finished() -> None:
    old = alices(".users/alice/run-7")
    carols = JobRecord("run-8", random_job(seed=8), url_for(".users/carol/run-8"), owner="carol", place=".users/carol/run-8")
    trusted = trusted_records(
        {"run-7.json": stored(old), ".users/alice/run-7.json": stored(old), "run-8.json": stored(carols)}, url_for
    )
    assert [record.key for record in trusted.records] == [JobKey("alice", "run-7"), JobKey("carol", "run-8")]
    assert trusted.skipped == []
    assert sorted((name, record.key if record else None) for name, record in trusted.renames) == [
        ("run-7.json", None), ("run-8.json", JobKey("carol", "run-8")),
    ]  # fmt: skip


def test_two_records_claiming_one_place_are_both_skipped() -> None:
    """A DELETE of either would remove the other's result, and a read of one would read the other's: neither is the one to trust."""
    anonymous = JobRecord("run-7", random_job(seed=7), url_for("run-7"), submitted_at="2026-01-01T00:00:00+00:00")
    forged = replace(alices("run-7"), submitted_at="2026-02-01T00:00:00+00:00")
    trusted = trusted_records({"run-7.json": stored(anonymous), ".users/alice/run-7.json": stored(forged)}, url_for)
    assert trusted.records == [] and trusted.renames == []
    assert sorted(trusted.skipped) == [
        "job record '.users/alice/run-7.json' claims place 'run-7', which holds the result of 'run-7.json'",
        "job record 'run-7.json' claims place 'run-7', which holds the result of '.users/alice/run-7.json'",
    ]


def test_a_record_whose_place_holds_another_jobs_result_is_skipped_and_that_job_loads() -> None:
    """Before the .users prefix, bob's job "alice" was at "alice" and alice's job "run-1" at "alice/run-1"."""
    bobs = JobRecord("alice", random_job(seed=1), url_for("alice"), owner="bob", place="alice")
    alices_old = JobRecord("run-1", random_job(seed=2), url_for("alice/run-1"), owner="alice", place="alice/run-1")
    trusted = trusted_records({"alice.json": stored(bobs), "run-1.json": stored(alices_old)}, url_for)
    assert [record.key for record in trusted.records] == [JobKey("alice", "run-1")]
    assert trusted.skipped == ["job record 'alice.json' claims place 'alice', which holds the result of 'run-1.json'"]


def test_differences_name_each_parameter_with_both_values_and_a_drawn_one_matches_any() -> None:
    existing = random_job(seed=42).compared(60)
    requested = random_job(seed=7, shape=(2000, 2000)).compared(None)
    assert differences(existing, requested, {"ttl"}) == {
        "seed": {"existing": 42, "requested": 7}, "shape": {"existing": [1000, 1000], "requested": [2000, 2000]},
    }  # fmt: skip
    assert differences(existing, requested, {"ttl", "seed"}) == {"shape": {"existing": [1000, 1000], "requested": [2000, 2000]}}
    assert differences(existing, {**existing}, ()) == {}


@pytest.mark.parametrize(
    "name, content",
    [
        ("run-7.json", b"{not json"),
        ("run-7.json", b"[]"),
        ("run-7.json", b"[" * 5000),
        ("run-7.json", stored(alices("run-7"), work={**WORK, "app": "x\n{}"})),
        ("run-7.json", from_before_apps(alices("run-7"), spec={"seed": 7})),
        ("run-7.json", from_before_apps(alices("run-7"), spec={"seed": 7, "shape": [10, 10], "chunks": [20, 20], "dtype": "float32"})),
        ("run-7.json", from_before_apps(alices("run-7"), spec={"seed": "7", "shape": [10, 10], "chunks": [10, 10], "dtype": "float32"})),
        ("run-7.json", stored(alices("run-7"), work={**WORK, "output": {"shape": [10, 10], "chunks": [10, 10], "dtype": "object", "shards": None}})),
        ("run-7.json", stored(alices("run-7"), work={**WORK, "output": {"shape": [10, 10.5], "chunks": [10, 10], "dtype": "float32", "shards": None}})),
        ("run-7.json", stored(alices("run-7"), work={**WORK, "parameters": []})),
        ("run-7.json", stored(alices("run-7"), work={**WORK, "sources": {"source": {"job_id": "../x", "finished_at": "t"}}})),
        ("run-7.json", stored(alices("run-7"), status="finished")),
        ("run-7.json", stored(alices("run-7"), unknown_field=1)),
        ("run-7.json", stored(alices("run-7"), submitted_at=7)),
        ("run-7.json", stored(alices("run-7"), submitted_at="yesterday")),
        ("run-7.json", stored(alices("run-7"), status="running", ttl=10**14)),  # no date follows: finishing it overflowed
        ("run-7.json", stored(alices("run-7"), seconds=float("nan"))),
        ("run-7.json", stored(alices("run-7"), chunks_written=-1)),
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
    assert place_for("run-7", name) == f"{prefix}/run-7"
    assert record_name(name, "run-7") == f"{prefix}/run-7.json"


def test_owners_prefixes_are_one_to_one() -> None:
    names = ["a/b", "a_2fb", "a.b", "a_2eb", "A", "a", "a b", "a_20b", "_", "__5f"]
    assert len({owner_prefix(name) for name in names}) == len(names)


def test_a_record_with_an_expiry_time_that_is_not_a_time_is_refused() -> None:
    kept = JobRecord("run-9", random_job(seed=9), url_for("run-9"), status="done", ttl=60, expires_at="2026-11-28T01:00:00+00:00")
    assert record_from_stored("run-9.json", stored(kept), url_for).expires_at == kept.expires_at
    for changes in ({"expires_at": "tomorrow"}, {"expires_at": "2026-11-28T01:00:00"}, {"ttl": 0}, {"ttl": "60"}):
        with pytest.raises(InvalidRecord, match="expiry"):
            record_from_stored("run-9.json", stored(kept, **changes), url_for)


def test_only_a_finished_job_past_its_time_has_expired() -> None:
    now = datetime.now(UTC)
    past = (now - timedelta(seconds=1)).isoformat()
    record = JobRecord("run-9", random_job(seed=9), url_for("run-9"), ttl=1, expires_at=past)
    assert [has_expired(replace(record, status=status), now) for status in ("queued", "running", "done", "failed", "cancelled")] == [
        False, False, True, True, True,
    ]
    assert not has_expired(replace(record, status="done", expires_at=(now + timedelta(seconds=1)).isoformat()), now)
    assert not has_expired(replace(record, status="done", expires_at=None), now)


def test_a_start_up_reads_every_record_in_batches_and_a_key_no_store_can_name_costs_that_key_alone(tmp_path) -> None:
    from science_gateway.results_store import RECORDS_PER_READ, ResultsStore

    store = ResultsStore(tmp_path.as_uri())
    records = [JobRecord(f"run-{index}", random_job(seed=index), store.url_for(f"run-{index}")) for index in range(RECORDS_PER_READ + 1)]
    for record in records:
        store.write_record(record.record_name, record.to_stored())
    # A name of bytes that are no UTF-8, as another tool could leave: obstore cannot even ask for it.
    (tmp_path / ".jobs" / os.fsdecode(b"\xff.json")).write_bytes(b"{}")
    trusted = trusted_records(store.read_records(), store.url_for, SCHEMAS)
    assert sorted(record.job_id for record in trusted.records) == sorted(record.job_id for record in records)
    assert trusted.skipped == ["job record '\\udcff.json' is malformed (JSONDecodeError: Expecting value: line 1 column 1 (char 0))"]


def test_a_done_records_parameters_are_shown_as_stored_and_only_a_queued_ones_must_fit_its_app() -> None:
    work = JobWork("random-array", "1.0.0", {"seed": -1}, Output((10, 10), (10, 10), "float32"))
    done = JobRecord("run-8", work, url_for("run-8"), status="done", finished_at="2026-12-01T00:00:00+00:00")
    assert record_from_stored("run-8.json", stored(done), url_for, SCHEMAS).work == work
    with pytest.raises(InvalidRecord, match="its parameters do not fit"):
        record_from_stored("run-8.json", stored(done, status="queued", finished_at=None), url_for, SCHEMAS)


def test_a_check_that_raises_costs_the_record_it_reads_and_no_other() -> None:
    def breaks(parameters: object) -> bool:
        raise RuntimeError("a check this module lacks")

    queued = JobRecord("run-1", random_job(seed=1), url_for("run-1"))
    other = JobRecord("run-2", random_job(seed=2), url_for("run-2"), status="done")
    trusted = trusted_records({"run-1.json": stored(queued), "run-2.json": stored(other)}, url_for, {"random-array": breaks})
    assert [record.job_id for record in trusted.records] == ["run-2"]
    assert trusted.skipped == ["job record 'run-1.json' could not be read (RuntimeError: a check this module lacks)"]
