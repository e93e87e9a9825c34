"""The service's error vocabulary: every failure it knows has an HTTP status and an error code.

A failure is raised where it happens, as a subclass of :class:`GatewayError`
that names its status and code, and the HTTP layer answers each the same way:
``{"error": {"code": ..., "message": ..., <details>}}`` with that status. A job
that fails records the code; a caller who waited for it gets the same status,
but for a dependency's outage (:class:`DependencyUnavailable`): the job's
failure is recorded, and ``recorded_status`` says how it is answered.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """A failure the service knows; the message says what happened and what to do."""

    status: ClassVar[int] = 500
    # How a job's recorded failure of this kind is answered (status_of); None: as ``status``.
    recorded_status: ClassVar[int | None] = None
    code: str = "internal_error"

    def details(self) -> dict[str, Any]:
        """Fields the JSON error carries beside its code and message."""
        return {}

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries."""
        return {}


# What a request refused for a shared dependency's outage is told to wait before trying again: the store or
# the cluster back within seconds is the usual case (a restarted pod, a network blip), and a client that
# tries again every 10 s for its minute (the client package's retry_for) rides out most of them.
DEPENDENCY_RETRY_AFTER_SECONDS = 10


class DependencyUnavailable(GatewayError):
    """A shared dependency (the results store, the Dask cluster) cannot serve this request now: ``503`` with
    ``Retry-After`` and ``error.dependency`` naming it, a part of ``/readyz``'s body.

    The request changed nothing that a second try would do twice: the gateway keeps serving, and the same
    request sent again once the dependency is back does what it asked.
    """

    status = 503
    dependency: str = ""

    def details(self) -> dict[str, Any]:
        return {"dependency": self.dependency}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(DEPENDENCY_RETRY_AFTER_SECONDS)}


def status_of(code: str) -> int:
    """The HTTP status of an error code recorded in a job; 500 for a code this version does not know."""
    kinds = [GatewayError]
    while kinds:
        kind = kinds.pop()
        if "code" in vars(kind) and kind.code == code:
            return kind.recorded_status or kind.status
        kinds += kind.__subclasses__()
    return 500
