"""Readiness, checked in the background and answered from memory.

A probe must answer within its timeout however busy the gateway is. Asking
the object store and the Dask scheduler on every probe made the answer as
slow as they were (up to seconds each under a workshop's load, or when one is
down); a thread asks them every second instead, and a probe reads its last answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 1.0


class Readiness:
    """The last answer of ``check`` (each part's ``ready`` and ``reason``), refreshed in a thread of its own."""

    def __init__(self, check: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self._check = check
        self._closing = threading.Event()
        self._details: dict[str, dict[str, Any]] = {"gateway": {"ready": False, "reason": "readiness not checked yet"}}
        self._thread = threading.Thread(target=self._check_until_closed, name="readiness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=30)
        self._details = {"gateway": {"ready": False, "reason": "the gateway is shut down"}}

    def current(self) -> dict[str, dict[str, Any]]:
        """The last answer."""
        return self._details

    def _check_until_closed(self) -> None:
        while not self._closing.is_set():
            try:
                self._details = self._check()
            except Exception as exc:
                logger.exception("the readiness check failed")
                self._details = {"gateway": {"ready": False, "reason": f"the readiness check failed: {type(exc).__name__}"}}
            self._closing.wait(CHECK_INTERVAL_SECONDS)
