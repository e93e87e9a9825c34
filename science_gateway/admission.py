"""Limits on what callers may ask of the gateway at once: refused at once with 429 and Retry-After.

A room of people running one notebook cell submits and waits all at once.
Without limits, waiting callers take every request thread (the probes then
time out and the pod is restarted), and one user's burst fills the queue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import GatewayError

# What a refused caller is told to wait before trying again.
RETRY_AFTER_SECONDS = 10


class AdmissionRefused(GatewayError, RuntimeError):
    """A request over one of the gateway's limits; the message names the limit and its setting."""

    status = 429

    def __init__(self, code: str, what: str, limit: int, setting: str, advice: str, usage: int | None = None) -> None:
        super().__init__(f"{what}: the limit is {limit} ({setting}); {advice}")
        self.code = code
        self.limit = limit
        self.setting = setting
        # How much of the limit is taken, where that is a quantity (stored bytes).
        self.usage = usage

    def details(self) -> dict[str, Any]:
        return {"limit": self.limit, "setting": self.setting} | ({"usage": self.usage} if self.usage is not None else {})

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}


class WaitingCallers:
    """Requests that hold their thread for long (a waiting /submit_job, a preview being drawn), at most ``limit`` at once.

    The request threads beyond that limit stay free for quick requests: the
    probes, ``/jobs`` polling and the page.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self, advice: str) -> Iterator[None]:
        """Hold a slot for the duration; :class:`AdmissionRefused` at once if none is free."""
        if not self._slots.acquire(blocking=False):
            raise AdmissionRefused(
                "too_many_waiting_callers", f"{self.limit} callers are waiting on the gateway already", self.limit,
                "GATEWAY_MAX_WAITING_CALLERS", advice,
            )  # fmt: skip
        try:
            yield
        finally:
            self._slots.release()
