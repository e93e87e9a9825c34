"""Limits on what callers may ask of the gateway at once: beyond them, 429 with Retry-After.

A room of people running one notebook cell submits and waits all at once.
Without limits, waiting callers would take every request thread, and one
user's burst would fill the queue and the waiting room. Each owner has a share
of the waiting room and of the result reads, within an overall limit.
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

    def __init__(
        self, code: str, what: str, limit: int, setting: str, advice: str, usage: int | None = None, retry_after: int = RETRY_AFTER_SECONDS
    ) -> None:
        super().__init__(f"{what}: the limit is {limit} ({setting}); {advice}")
        self.code = code
        self.limit = limit
        self.setting = setting
        # How much of the limit is taken, where that is a quantity (stored bytes).
        self.usage = usage
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        return {"limit": self.limit, "setting": self.setting} | ({"usage": self.usage} if self.usage is not None else {})

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Places:
    """Places that requests of one kind hold while they run: at most ``total`` at once, and ``per_owner`` of one owner.

    A request of a named owner counts against both; one without an owner (a
    gateway without authentication) against ``total`` alone. One owner's
    requests never take more than their share, so they never take another
    owner's place while the total has room. A request beyond a limit waits up
    to ``patience`` seconds for a place to come free, if fewer than ``total``
    requests wait already (each waits in a request thread), then is refused with 429.
    """

    def __init__(self, kind: str, total: int, per_owner: int | None, patience: float = 0.0) -> None:
        self.kind = kind
        self.total = total
        self.per_owner = per_owner
        self._patience = patience
        self._changed = threading.Condition()
        self._taken = 0
        self._waiting = 0
        self._by_owner: dict[str, int] = {}

    @property
    def taken(self) -> int:
        return self._taken

    @property
    def waiting(self) -> int:
        """Requests waiting for a place now."""
        return self._waiting

    def _refusal(self, owner: str | None) -> tuple[str, int, str] | None:
        """The limit a new place of ``owner`` would pass (its code, value and setting), or None; called with the lock held."""
        if self.per_owner is not None and owner is not None and self._by_owner.get(owner, 0) >= self.per_owner:
            return f"too_many_{self.kind}_of_owner", self.per_owner, f"GATEWAY_MAX_{self.kind.upper()}_PER_OWNER"
        if self._taken >= self.total:
            return f"too_many_{self.kind}", self.total, f"GATEWAY_MAX_{self.kind.upper()}"
        return None

    @contextmanager
    def place(self, owner: str | None, advice: str, retry_after: int = RETRY_AFTER_SECONDS) -> Iterator[None]:
        """Hold a place of ``owner`` for the duration; :class:`AdmissionRefused` if none comes free in time."""
        with self._changed:
            if self._patience and self._waiting < self.total and self._refusal(owner) is not None:
                self._waiting += 1
                try:
                    self._changed.wait_for(lambda: self._refusal(owner) is None, self._patience)
                finally:
                    self._waiting -= 1
            refusal = self._refusal(owner)
            if refusal is not None:
                code, limit, setting = refusal
                whose = f"{owner} has" if code.endswith("_of_owner") else "the gateway has"
                raise AdmissionRefused(code, f"{whose} {limit} {self.kind.replace('_', ' ')} already", limit, setting, advice, retry_after=retry_after)
            self._taken += 1
            if owner is not None:
                self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                self._taken -= 1
                if owner is not None:
                    self._by_owner[owner] -= 1
                    if not self._by_owner[owner]:
                        del self._by_owner[owner]
                # Waiters of other owners may be the ones a freed place lets in.
                self._changed.notify_all()
