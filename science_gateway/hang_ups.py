"""Callers who wait for a job, woken when it changes or at once when they hang up.

A waiting ``/submit_job`` holds a request thread and a place in the waiting room
(``admission.py``). A caller who gives up (a notebook cell interrupted, a
``curl`` stopped) closes its connection, and its place must be free at once,
not when its job ends. The gateway learns of a closed connection only by
reading from it: one thread watches the connections of every waiting caller
with one selector and wakes the caller whose peer has closed. gunicorn and
Werkzeug's own server give the WSGI app the connection; a caller who waits
without one (Flask's test client) waits as before, and so does one whose
connection becomes readable with bytes of a next request: the watch lets go of
it, reading nothing.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class Waiter:
    """One caller waiting for a job: ``wake`` is set at each change of the job, and when the caller hangs up."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.gone = False

    def hang_up(self) -> None:
        self.gone = True
        self.wake.set()


class HangUpWatch:
    """Watches waiting callers' connections in a thread of its own; a caller whose peer closes is woken with ``gone`` set."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        # Written to when a connection is added, so that a select() begun before sees it.
        self._nudge_receiver, self._nudge_sender = socket.socketpair()
        self._nudge_receiver.setblocking(False)
        self._nudge_sender.setblocking(False)
        self._selector.register(self._nudge_receiver, selectors.EVENT_READ)
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, connection: socket.socket | None) -> Iterator[Waiter]:
        """A waiter that is woken if ``connection`` closes while the block runs; ``connection`` is left as it was."""
        waiter = Waiter()
        if connection is None:
            yield waiter
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="hang-up-watch", daemon=True)
                self._thread.start()
            key = self._selector.register(connection, selectors.EVENT_READ, waiter)
        try:
            self._nudge_sender.send(b"\0")
        except BlockingIOError:
            pass  # nudges are waiting to be read already: the watch looks again anyway
        try:
            yield waiter
        finally:
            with self._lock:
                # The watch may have let go of it already, when it closed or sent more; the key, not the
                # connection's number, says whether this registration is still there (a closed socket has none).
                if self._selector.get_map().get(key.fd) is key:
                    self._selector.unregister(key.fileobj)

    def _watch(self) -> None:
        while True:
            try:
                self._look()
            except Exception:
                # The watch must outlive any one connection's trouble: without it no place comes free early.
                logger.exception("watching the waiting callers' connections failed; watching on in a second")
                time.sleep(1)

    def _look(self) -> None:
        for key, _ in self._selector.select():
            if key.data is None:
                try:
                    self._nudge_receiver.recv(4096)
                except BlockingIOError:
                    pass
                continue
            with self._lock:
                # Let go before the caller's own finally can, and never after the socket went back to the server.
                if self._selector.get_map().get(key.fd) is not key:
                    continue
                self._selector.unregister(key.fileobj)
            if _has_closed(key.fileobj):  # type: ignore[arg-type]  # only sockets are registered
                key.data.hang_up()


def _has_closed(connection: socket.socket) -> bool:
    """Whether the peer closed a readable connection; bytes waiting to be read (a next request) are left unread."""
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        # A reset connection is as gone as a closed one.
        return True
    except ValueError:
        # A TLS socket refuses to peek; such a caller waits as one without a connection to watch.
        return False
