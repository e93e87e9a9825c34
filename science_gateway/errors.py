"""The service's error vocabulary: every failure it knows has an HTTP status and an error code.

A failure is raised where it happens, as a subclass of :class:`GatewayError`
that names its status and code, and the HTTP layer answers each the same way:
``{"error": {"code": ..., "message": ..., <details>}}`` with that status. A job
that fails records the code; a caller who waited for it gets the same status.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """A failure the service knows; the message says what happened and what to do."""

    status: ClassVar[int] = 500
    code: str = "internal_error"

    def details(self) -> dict[str, Any]:
        """Fields the JSON error carries beside its code and message."""
        return {}

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries."""
        return {}


def status_of(code: str) -> int:
    """The HTTP status of an error code recorded in a job; 500 for a code this version does not know."""
    kinds = [GatewayError]
    while kinds:
        kind = kinds.pop()
        if kind.code == code:
            return kind.status
        kinds += kind.__subclasses__()
    return 500
