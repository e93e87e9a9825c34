"""Calls to JupyterHub's API from many request threads at once, on one event loop of the gateway's own.

jupyterhub's service helpers (``HubAuth``, ``HubOAuth``) are asyncio code. Their
synchronous wrappers run each call on an event loop that the helper makes
lazily, at its first call: two request threads that make the first call at once
each make one, and one of them then fails with "This event loop is already
running" (a burst of 30 first calls with one new token got 500s that way). Here
each call is the helper's coroutine (``sync=False``), run on one loop that a
thread of its own keeps running: calls from many threads go on concurrently,
and none waits for another's answer.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# A hub that takes longer than this to answer one call is treated as unavailable.
CALL_TIMEOUT_SECONDS = 30.0


class HubLoop:
    """One event loop in a daemon thread, on which request threads run the hub helpers' coroutines."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="hub-calls", daemon=True).start()

    def run(self, call: Coroutine[Any, Any, T]) -> T:
        """The coroutine's result, or its exception; :class:`TimeoutError` after ``CALL_TIMEOUT_SECONDS``."""
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        try:
            return future.result(CALL_TIMEOUT_SECONDS)
        except TimeoutError:
            future.cancel()
            raise


@functools.cache
def hub_loop() -> HubLoop:
    """The process's one loop for hub calls, started at the first use."""
    return HubLoop()
