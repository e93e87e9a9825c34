"""The client's exceptions: each says what happened and what to do, and carries what the gateway said.

    GatewayClientError
    ├── ConfigurationError       no gateway address, a bad argument: fix the call or the environment
    ├── MissingExtra             job.open() without the [xarray] extra
    ├── GatewayRefused           a 4xx answer (after the retries of 429): status, code, message, details, error
    │   ├── NotAuthenticated     401, 403
    │   ├── JobNotFound          404 job_not_found
    │   └── TooManyRequests      429 whose Retry-After was beyond the client's retry bound
    ├── GatewayUnavailable       no connection, or a 5xx after the retries
    ├── JobUnsuccessful          the job ended without a result: record, code, message, details, error
    │   ├── JobFailed            status failed
    │   └── JobCancelled         status cancelled
    ├── JobNotDone               job.open() of a queued or running job
    └── WaitTimeout              job.wait(timeout=...) ran out (also a TimeoutError)
"""

from __future__ import annotations

from typing import Any


class GatewayClientError(Exception):
    """Every error of this client."""


class ConfigurationError(GatewayClientError, ValueError):
    """The client cannot be used as configured: the message names the argument or variable to set."""


class MissingExtra(GatewayClientError, ImportError):
    """An optional dependency is missing: the message names the pip install that adds it."""


class _GatewayAnswer(GatewayClientError):
    """An error answer of the gateway: ``{"error": {"code", "message", ...}}``."""

    def __init__(self, message: str, *, status: int | None = None, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        # The gateway's whole error object: its extra fields (limit, setting, differences, job, apps...) included.
        self.error: dict[str, Any] = error or {}
        self.code: str | None = self.error.get("code")
        self.message: str = self.error.get("message") or message
        # The gateway's error.details where it gives them (invalid_parameters: each field refused, by JSON pointer).
        self.details: Any = self.error.get("details")


class GatewayRefused(_GatewayAnswer):
    """The gateway refused the request (4xx): ``code`` and ``message`` are its own, which say what to do."""


class NotAuthenticated(GatewayRefused):
    """401 or 403: no token, or one that may not call the gateway."""


class JobNotFound(GatewayRefused, LookupError):
    """404 job_not_found: no such job of yours (deleted, expired, another user's, or never submitted)."""


class TooManyRequests(GatewayRefused):
    """429 whose Retry-After was beyond what the client waits (``retry_for``); ``retry_after`` is the gateway's advice in seconds."""

    def __init__(self, message: str, *, status: int | None = None, error: dict[str, Any] | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status, error=error)
        self.retry_after = retry_after


class GatewayUnavailable(_GatewayAnswer):
    """The gateway did not answer (connection refused, reset, timed out), or answered 5xx after the retries."""


class JobUnsuccessful(GatewayClientError):
    """The job ended without a result. ``record`` is its last record; ``code``, ``message``, ``details`` its error's."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.job_id: str = record.get("job_id", "?")
        self.status: str = record.get("status", "?")
        self.error: dict[str, Any] = record.get("error") or {}
        self.code: str | None = self.error.get("code")
        self.message: str = self.error.get("message") or f"job {self.job_id!r} ended {self.status}"
        self.details: Any = self.error.get("details")
        code = f" ({self.code})" if self.code else ""
        super().__init__(f"job {self.job_id!r} {self.status}{code}: {self.message}; submit it again with the same id to run it again")


class JobFailed(JobUnsuccessful):
    """The job's status is ``failed``."""


class JobCancelled(JobUnsuccessful):
    """The job's status is ``cancelled``."""


class JobNotDone(GatewayClientError):
    """The job has no result yet: ``job.wait()`` first."""


class WaitTimeout(GatewayClientError, TimeoutError):
    """``job.wait(timeout=...)`` ran out with the job still queued or running; it goes on: wait again, or cancel it."""


def unsuccessful(record: dict[str, Any]) -> JobUnsuccessful:
    """The error of a record whose status is failed or cancelled."""
    return JobCancelled(record) if record.get("status") == "cancelled" else JobFailed(record)
