"""A job's record: what it computes, its fields, its JSON forms, its paging order, and which stored records to trust.

A record is written to the results store at every change of status (``JobManager``);
one read back from the store is untrusted input, checked by :func:`record_from_stored`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from .apps.base import Output
from .apps.registry import NAME_PATTERN
from .job_parameters import InvalidJobId, InvalidParameters, validate_job_id
from .job_work import FIRST_APP, FIRST_APP_VERSION, JobWork, SourceRun
from .results_store import ARRAY_NAME, owner_prefix, place_for, record_name
from .settings import LONGEST_TTL, REPLICA_ID_PATTERN

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)
# Jobs whose result is stored, or will be: what a quota counts.
TAKING_SPACE = (QUEUED, RUNNING, DONE)
# A finished job of these may be submitted again under the same id.
RESUBMITTABLE = (FAILED, CANCELLED)
MAX_PAGE = 1000


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class JobKey(NamedTuple):
    """What names a job: its owner (None without authentication) and the id the owner gave it.

    Each owner's ids are their own: alice's and bob's ``my-first-job`` are two jobs.
    """

    owner: str | None
    job_id: str

    def __str__(self) -> str:
        # For log lines: "my-first-job of alice".
        return self.job_id if self.owner is None else f"{self.job_id} of {self.owner}"


@dataclass(slots=True)
class JobRecord:
    job_id: str
    work: JobWork
    url: str
    # Who submitted it (None without authentication), and where its result is under the results URL.
    owner: str | None = None
    place: str = ""
    status: str = QUEUED
    submitted_at: str = field(default_factory=now)
    started_at: str | None = None
    finished_at: str | None = None
    chunks_written: int = 0
    seconds: float | None = None
    error: dict[str, str] | None = None
    # Seconds its result and record are kept once it has finished (None: until deleted), and until when.
    ttl: int | None = None
    expires_at: str | None = None
    # The replica that holds it while it is queued or running (None: none; records from before replicas).
    replica: str | None = None

    def __post_init__(self) -> None:
        # Records written before places had none: their result is at the job id.
        # Never empty, which would name the whole results location.
        self.place = self.place or self.job_id

    @property
    def key(self) -> JobKey:
        return JobKey(self.owner, self.job_id)

    @property
    def record_name(self) -> str:
        """Its name under the records prefix."""
        return record_name(self.owner, self.job_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "owner": self.owner,
            "status": self.status,
            "url": self.url,
            "array_url": f"{self.url}/{ARRAY_NAME}",
            "app": self.work.app,
            "app_version": self.work.app_version,
            "parameters": self.work.parameters,
            **self.work.output.to_json(),
            "progress": {"chunks_written": self.chunks_written, "chunks_total": self.work.output.n_chunks},
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": self.seconds,
            "error": self.error,
            "ttl": self.ttl,
            "expires_at": self.expires_at,
        }

    def to_stored(self) -> dict[str, Any]:
        stored = asdict(self)
        stored["work"] = self.work.to_stored()
        return stored


def finish(record: JobRecord, status: str, **changes: Any) -> JobRecord:
    """The record as it ends now: a result kept for ``ttl`` seconds expires that long after.

    Held by no replica: its run has stopped (unless ``replica`` says which replica is still stopping it).
    """
    now = datetime.now(UTC)
    expires_at = (now + timedelta(seconds=record.ttl)).isoformat(timespec="microseconds") if record.ttl else None
    ended = {"status": status, "finished_at": now.isoformat(timespec="microseconds"), "expires_at": expires_at, "replica": None}
    return replace(record, **{**ended, **changes})


def has_expired(record: JobRecord, now: datetime) -> bool:
    """Whether a finished job's time is up; a queued or running one has no expiry time to pass."""
    return record.status in FINISHED and record.expires_at is not None and datetime.fromisoformat(record.expires_at) <= now


def sort_key(record: JobRecord) -> tuple[str, str, str]:
    # Two owners' jobs of one id may be submitted in the same microsecond.
    return (record.submitted_at, record.job_id, record.owner or "")


def encode_cursor(record: JobRecord) -> str:
    return base64.urlsafe_b64encode(json.dumps(sort_key(record)).encode()).decode()


def decode_cursor(cursor: str) -> tuple[str, str, str]:
    try:
        submitted_at, job_id, owner = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return str(submitted_at), str(job_id), str(owner)
    # A caller's cursor may decode to anything, JSON nested past Python's depth included.
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise InvalidParameters("cursor is not one this service gave out; use next_cursor from a listing") from None


class InvalidRecord(ValueError):
    """A stored job record that this service would not have written: it is skipped, never trusted."""


def _places(job_id: str, owner: str | None) -> set[str]:
    """Where this service puts (or, before owners' prefixes were encoded, put) the result of ``owner``'s job."""
    if owner is None:
        return {job_id}
    places = {job_id, place_for(job_id, owner)}
    if owner_prefix(owner).split("/", 1)[1] == owner:
        # Before the .users prefix: "<owner>/<job_id>", for names that are a plain path segment.
        places.add(f"{owner}/{job_id}")
    return places


def record_from_stored(name: str, content: bytes, url_for: Callable[[str], str], schemas: Mapping[str, Callable[[Any], bool]] | None = None) -> JobRecord:
    """The job record stored as ``name``; :class:`InvalidRecord` unless this service could have written it.

    Its name is its own (:func:`record_name`), or ``<job_id>.json`` for a record
    of an owner from before each owner had ids of their own, which the job manager then renames.
    ``schemas`` says, for each app offered, whether its schema accepts the parameters of a queued record, which is to run;
    a record of an app not offered is loaded (listed, deleted), and fails if it is to run.

    A record in the bucket is untrusted input: its place is what a DELETE removes
    and its URL what a preview reads, so both must be the job's own.
    """
    try:
        stored = json.loads(content, object_pairs_hook=_shared_strings)
        work = _work_from_stored(stored)
        record = JobRecord(**{**{key: value for key, value in stored.items() if key not in ("spec", "work")}, "work": work})
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise InvalidRecord(f"job record {name!r} is malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
    job_id, owner = record.job_id, record.owner
    valid_owner = owner is None or (isinstance(owner, str) and owner != "" and _is_utf8(owner))
    # Only a queued job's parameters go to its app again; checking every record's took most of a start-up.
    accepts = (schemas or {}).get(work.app) if record.status == QUEUED else None
    checks = {
        "parameters": accepts is None or accepts(work.parameters),
        "job_id": isinstance(job_id, str) and _is_job_id(job_id) and valid_owner and name in (f"{job_id}.json", record_name(owner, job_id)),
        "owner": valid_owner,
        "place": valid_owner and isinstance(job_id, str) and record.place in _places(job_id, owner),
        "url": isinstance(record.place, str) and record.url == url_for(record.place),
        "status": record.status in STATUSES,
        "times": _is_time(record.submitted_at) and all(_is_time_or_none(time) for time in (record.started_at, record.finished_at)),
        "progress": type(record.chunks_written) is int
        and record.chunks_written >= 0
        and (record.seconds is None or (type(record.seconds) in (int, float) and 0 <= record.seconds < math.inf)),
        "error": record.error is None or (isinstance(record.error, dict) and all(isinstance(record.error.get(key), str) for key in ("code", "message"))),
        # A ttl beyond the longest a gateway gives has no expiry time: finishing its job would overflow.
        "replica": record.replica is None or (isinstance(record.replica, str) and re.fullmatch(REPLICA_ID_PATTERN, record.replica) is not None),
        "expiry": (record.ttl is None or (type(record.ttl) is int and 0 < record.ttl <= LONGEST_TTL)) and _is_time_or_none(record.expires_at),
    }
    wrong = [field for field, valid in checks.items() if not valid]
    if wrong:
        raise InvalidRecord(f"job record {name!r} is not one this gateway writes: its {', '.join(wrong)} do not fit")
    return record


# The dtypes an output may have: numbers zarr stores as they are, little-endian.
OUTPUT_DTYPES = frozenset(("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"))
# Sides beyond this are no array a gateway writes, and keep sizes exact integers.
MAX_STORED_SIDE = 2**40


def _work_from_stored(stored: dict[str, Any]) -> JobWork:
    """A record's work, checked field by field; a record from before there were apps holds a random array's "spec"."""
    if "spec" in stored:
        # Records from before shards have none: their results are one object per chunk.
        spec = {"shards": None, **stored["spec"]}
        output = _output({key: spec[key] for key in ("shape", "chunks", "dtype", "shards")})
        if not (type(spec["seed"]) is int and 0 <= spec["seed"] < 2**63) or set(spec) != {"seed", "shape", "chunks", "dtype", "shards"}:
            raise ValueError("its spec is not a random array's")
        return JobWork(FIRST_APP, FIRST_APP_VERSION, spec, output)
    work = stored["work"]
    sources = {name: SourceRun(str(source["job_id"]), str(source["finished_at"])) for name, source in work["sources"].items()}
    if not all(isinstance(value, str) for value in (work["app"], work["app_version"])) or not isinstance(work["parameters"], dict):
        raise ValueError("its app, app_version or parameters are of the wrong type")
    # The app's name labels metrics: one this service could not have offered is no record of its own.
    if not re.fullmatch(NAME_PATTERN, work["app"]) or len(work["app_version"]) > 100:
        raise ValueError("its app is no name of an app")
    if not all(_is_job_id(source.job_id) for source in sources.values()):
        raise ValueError("a source is not a job id")
    return JobWork(work["app"], work["app_version"], work["parameters"], _output(work["output"]), sources)


def _output(stored: dict[str, Any]) -> Output:
    def sides(value: Any) -> tuple[int, ...]:
        if not (isinstance(value, list) and len(value) == 2 and all(type(side) is int and 1 <= side <= MAX_STORED_SIDE for side in value)):
            raise ValueError(f"{value!r} is not two sides")
        return tuple(value)

    shape, chunks = sides(stored["shape"]), sides(stored["chunks"])
    shards = None if stored["shards"] is None else sides(stored["shards"])
    if stored["dtype"] not in OUTPUT_DTYPES or any(step > size for step, size in zip(chunks, shape, strict=True)):
        raise ValueError("its output's dtype or chunks do not fit")
    if shards is not None and any(shard % step for shard, step in zip(shards, chunks, strict=True)):
        raise ValueError("its output's shards are not whole chunks")
    return Output(shape, chunks, stored["dtype"], shards)


@dataclass
class TrustedRecords:
    """What a start-up makes of the stored records."""

    # The records to load, oldest first.
    records: list[JobRecord]
    # Why each of the others is skipped.
    skipped: list[str]
    # Records of owners still under their name from before each owner had ids of their own:
    # each old name, and the record to store under its own name first (None: it is there already).
    renames: list[tuple[str, JobRecord | None]]


def trusted_records(
    stored: Mapping[str, bytes] | Iterable[tuple[str, bytes]], url_for: Callable[[str], str], schemas: Mapping[str, Callable[[Any], bool]] | None = None
) -> TrustedRecords:
    """The stored records (by name under the records prefix) that this service could have written, one per job and place.

    A job stored under both its old and its own name (a rename cut short) is the
    one under its own name. A place is what a DELETE of its job removes and what
    a read of its result reaches: two records claiming one place are both
    skipped, and so is a record whose place holds another's (a job whose id was
    an owner's name, over that owner's results of the layout before ``.users``).
    An operator finds each in the log.
    """
    skipped: list[str] = []
    candidates = []
    for name, content in stored.items() if isinstance(stored, Mapping) else stored:
        try:
            candidates.append((name, record_from_stored(name, content, url_for, schemas)))
        except InvalidRecord as exc:
            skipped.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - a check this module lacks must cost one record, never the start-up of the others
            skipped.append(f"job record {name!r} could not be read ({type(exc).__name__}: {str(exc)[:200]})")
    # Records under their own names first: of one job's two, that is the one this version wrote last.
    candidates.sort(key=lambda candidate: (candidate[0] != candidate[1].record_name, sort_key(candidate[1])))
    records: dict[JobKey, tuple[str, JobRecord]] = {}
    renames: list[tuple[str, JobRecord | None]] = []
    for name, record in candidates:
        if record.key not in records:
            records[record.key] = (name, record)
        elif name == record.record_name:
            skipped.append(f"job record {name!r} is a second record of job {record.key}")
        else:
            renames.append((name, None))
    # Each place, and each of the places above it, with the records whose places are there.
    claims: dict[str, list[str]] = {}
    for name, record in records.values():
        parts = record.place.split("/")
        for depth in range(1, len(parts) + 1):
            claims.setdefault("/".join(parts[:depth]), []).append(name)
    trusted = []
    for name, record in records.values():
        others = [other for other in claims[record.place] if other != name]
        if others:
            skipped.append(f"job record {name!r} claims place {record.place!r}, which holds the result of {', '.join(map(repr, others))}")
            continue
        trusted.append(record)
        if name != record.record_name:
            renames.append((name, record))
    return TrustedRecords(sorted(trusted, key=sort_key), skipped, renames)


# Values that many records share: one string each in memory, however many records hold it.
_SHARED_VALUES = frozenset(("owner", "status", "app", "app_version", "dtype"))


def _shared_strings(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys, and whose values that records share, are interned: 100,000 records hold one copy of each."""
    return {sys.intern(key): sys.intern(value) if key in _SHARED_VALUES and type(value) is str else value for key, value in pairs}


def _is_time_or_none(value: Any) -> bool:
    return value is None or _is_time(value)


def _is_time(value: Any) -> bool:
    try:
        return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _is_utf8(text: str) -> bool:
    # A lone surrogate ("\ud800") is a str that has no UTF-8 form: no prefix or key can be made of it.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_job_id(job_id: str) -> bool:
    try:
        validate_job_id(job_id)
    except InvalidJobId:
        return False
    return True
