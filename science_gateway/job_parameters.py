"""A job's id, its ttl, and how a repeat of an id compares with the job it names: what every app's jobs share."""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Mapping
from typing import Any

from .errors import GatewayError
from .settings import LONGEST_TTL

JOB_ID_RULE = "1 to 128 characters of letters, digits, '.', '_' and '-', not starting with '.'"
# The rule as a regular expression, whole values only: the API document, the apps' schemas and the jobs page's form take it from here.
JOB_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"


class InvalidJobId(GatewayError, ValueError):
    """The job id is not one the service accepts; the message says what is allowed."""

    status, code = 400, "invalid_job_id"


class InvalidParameters(GatewayError, ValueError):
    """A job parameter is malformed or out of range; the message names it."""

    status, code = 400, "invalid_parameters"


def validate_job_id(job_id: str) -> str:
    """Return the id unchanged, or raise :class:`InvalidJobId`."""
    if not re.fullmatch(JOB_ID_PATTERN, job_id, re.ASCII):
        shown = job_id if len(job_id) <= 40 else job_id[:40] + "..."
        raise InvalidJobId(f"invalid job id {shown!r}: a job id is {JOB_ID_RULE}")
    return job_id


def new_job_id() -> str:
    return f"job-{secrets.token_hex(8)}"


def parse_ttl(value: Any, default: int | None, maximum: int | None) -> int | None:
    """A job's ``ttl`` parameter: seconds its result is kept once finished; the gateway's default when absent."""
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        ttl = int(value) if isinstance(value, str) and len(value) <= 30 else value
    except ValueError:
        ttl = None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise InvalidParameters(f"ttl must be a whole number of seconds above 0, got {value!r}")
    if maximum is not None and ttl > maximum:
        raise InvalidParameters(f"ttl {ttl} is over the limit of {maximum} s (GATEWAY_MAX_RESULT_TTL)")
    if ttl > LONGEST_TTL:
        raise InvalidParameters(f"ttl {ttl} is over {LONGEST_TTL} s (100 years); leave ttl out to keep the result until it is deleted")
    return ttl


def differences(existing: Mapping[str, Any], requested: Mapping[str, Any], left_to_gateway: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each requested parameter whose value is not the existing job's, with both values.

    A parameter the caller left out for the gateway to choose (``left_to_gateway``:
    a seed drawn at random, the default ttl) matches whatever the existing job has.
    """
    return {
        name: {"existing": existing.get(name), "requested": value}
        for name, value in requested.items()
        if name not in left_to_gateway and existing.get(name) != value
    }
