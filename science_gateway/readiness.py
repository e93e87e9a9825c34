"""Readiness, checked in the background and answered from memory.

A probe must answer within its timeout however busy the gateway is. Asking
the object store and the Dask scheduler on every probe made the answer as
slow as they were (up to seconds each under a workshop's load, or when one is
down); a thread asks them every second instead, and a probe reads its last answer.

What the answer is for: each dependency's state, for people and for
``/readyz``'s body. Whether the process is ready is another question, answered
in gateway.py (``readiness_answer``): a dependency's outage leaves it ready.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 1.0


class Readiness:
    """The last answer of ``check`` (each of ``parts``' ``ready`` and ``reason``), refreshed in a thread of its own."""

    def __init__(self, check: Callable[[], dict[str, dict[str, Any]]], parts: tuple[str, ...]) -> None:
        self._check = check
        self._parts = parts
        self._closing = threading.Event()
        self._details = self._each("not checked yet")
        self._thread = threading.Thread(target=self._check_until_closed, name="readiness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=30)
        self._details = self._each("the gateway is shut down")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has begun: the process is shutting down."""
        return self._closing.is_set()

    def current(self) -> dict[str, dict[str, Any]]:
        """The last answer."""
        return self._details

    def _each(self, reason: str) -> dict[str, dict[str, Any]]:
        return {part: {"ready": False, "reason": reason} for part in self._parts}

    def _check_until_closed(self) -> None:
        while not self._closing.is_set():
            try:
                self._details = self._check()
            except Exception as exc:
                logger.exception("the readiness check failed")
                self._details = self._each(f"the readiness check failed: {type(exc).__name__}")
            self._closing.wait(CHECK_INTERVAL_SECONDS)
