"""A job's record: its fields, its JSON forms, its paging order, and which stored records to trust.

A record is written to the results store at every change of status (``JobManager``);
one read back from the store is untrusted input, checked by :func:`record_from_stored`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .job_parameters import InvalidJobId, InvalidParameters, RandomArraySpec, parse_spec, validate_job_id
from .results_store import ARRAY_NAME, owner_prefix, place_for

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


@dataclass
class JobRecord:
    job_id: str
    spec: RandomArraySpec
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

    def __post_init__(self) -> None:
        # Records written before places had none: their result is at the job id.
        # Never empty, which would name the whole results location.
        self.place = self.place or self.job_id

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "owner": self.owner,
            "status": self.status,
            "url": self.url,
            "array_url": f"{self.url}/{ARRAY_NAME}",
            **self.spec.to_json(),
            "progress": {"chunks_written": self.chunks_written, "chunks_total": self.spec.n_chunks},
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
        stored["spec"] = self.spec.to_json()
        return stored


def finish(record: JobRecord, status: str, **changes: Any) -> JobRecord:
    """The record as it ends now: a result kept for ``ttl`` seconds expires that long after."""
    now = datetime.now(UTC)
    expires_at = (now + timedelta(seconds=record.ttl)).isoformat(timespec="microseconds") if record.ttl else None
    return replace(record, status=status, finished_at=now.isoformat(timespec="microseconds"), expires_at=expires_at, **changes)


def has_expired(record: JobRecord, now: datetime) -> bool:
    """Whether a finished job's time is up; a queued or running one has no expiry time to pass."""
    return record.status in FINISHED and record.expires_at is not None and datetime.fromisoformat(record.expires_at) <= now


def sort_key(record: JobRecord) -> tuple[str, str]:
    return (record.submitted_at, record.job_id)


def encode_cursor(record: JobRecord) -> str:
    return base64.urlsafe_b64encode(json.dumps(sort_key(record)).encode()).decode()


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        submitted_at, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return str(submitted_at), str(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidParameters("cursor is not one this service gave out; use next_cursor from a listing") from None


class InvalidRecord(ValueError):
    """A stored job record that this service would not have written: it is skipped, never trusted."""


def _places(job_id: str, owner: str | None) -> set[str]:
    """Where this service puts (or, before owners' prefixes were encoded, put) the result of ``owner``'s job."""
    if owner is None:
        return {job_id}
    places = {job_id, place_for(job_id, owner, per_user=True)}
    if owner_prefix(owner).split("/", 1)[1] == owner:
        # Before the .users prefix: "<owner>/<job_id>", for names that are a plain path segment.
        places.add(f"{owner}/{job_id}")
    return places


def record_from_stored(name: str, content: bytes, url_for: Callable[[str], str]) -> JobRecord:
    """The job record stored as ``name`` (``<job_id>.json``); :class:`InvalidRecord` unless this service could have written it.

    A record in the bucket is untrusted input: its place is what a DELETE removes
    and its URL what a preview reads, so both must be the job's own.
    """
    try:
        stored = json.loads(content)
        # Records from before shards have none: their results are one object per chunk.
        stored["spec"] = {"shards": None, **stored["spec"]}
        spec = parse_spec(stored["spec"], max_elements=math.inf, max_chunks=math.inf)
        record = JobRecord(**{**stored, "spec": spec})
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidRecord(f"job record {name!r} is malformed ({type(exc).__name__}: {exc})") from None
    job_id, owner = record.job_id, record.owner
    valid_owner = owner is None or (isinstance(owner, str) and owner != "")
    checks = {
        "spec": record.spec.to_json() == stored["spec"],
        "job_id": isinstance(job_id, str) and name == f"{job_id}.json" and _is_job_id(job_id),
        "owner": valid_owner,
        "place": valid_owner and isinstance(job_id, str) and record.place in _places(job_id, owner),
        "url": isinstance(record.place, str) and record.url == url_for(record.place),
        "status": record.status in STATUSES,
        "times": isinstance(record.submitted_at, str)
        and all(time is None or isinstance(time, str) for time in (record.started_at, record.finished_at)),
        "progress": type(record.chunks_written) is int and (record.seconds is None or type(record.seconds) in (int, float)),
        "error": record.error is None
        or (isinstance(record.error, dict) and all(isinstance(record.error.get(key), str) for key in ("code", "message"))),
        "expiry": (record.ttl is None or (type(record.ttl) is int and record.ttl > 0)) and _is_time_or_none(record.expires_at),
    }
    wrong = [field for field, valid in checks.items() if not valid]
    if wrong:
        raise InvalidRecord(f"job record {name!r} is not one this gateway writes: its {', '.join(wrong)} do not fit")
    return record


def _is_time_or_none(value: Any) -> bool:
    if value is None:
        return True
    try:
        return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _is_job_id(job_id: str) -> bool:
    try:
        validate_job_id(job_id)
    except InvalidJobId:
        return False
    return True
