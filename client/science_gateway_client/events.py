"""Server-Sent Events, as the HTML standard parses them: the gateway's ``GET /jobs/<id>/events``.

The parser takes bytes as they arrive (any cut, lines ended by CRLF, LF or CR) and gives each event at its blank
line: ``id`` (the last one seen, as the standard's last event ID), ``event`` (``message`` when none), ``data`` (its
``data:`` lines joined by newlines) and ``retry`` (milliseconds, when the event set it). Comments (``: keep-alive``)
give no event; a field the standard does not know is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None
    retry: int | None = None


class EventParser:
    """Feed it bytes; it gives the events they complete. ``last_event_id`` persists across events, as the standard says."""

    def __init__(self) -> None:
        self._buffer = b""
        self._after_cr = False
        self._data: list[str] = []
        self._event = ""
        self._retry: int | None = None
        self.last_event_id: str | None = None
        # Set by a ``retry:`` field: the reconnection time, in milliseconds, the server asks for.
        self.retry: int | None = None
        self._first_line = True

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        events = []
        for line in self._lines(chunk):
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _lines(self, chunk: bytes) -> Iterator[str]:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF cut between two chunks
        self._after_cr = False
        self._buffer += chunk
        while True:
            cut = min((i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                return
            line, ending = self._buffer[:cut], self._buffer[cut : cut + 1]
            rest = self._buffer[cut + 1 :]
            if ending == b"\r":
                if rest.startswith(b"\n"):
                    rest = rest[1:]
                elif not rest:
                    self._after_cr = True
            self._buffer = rest
            text = line.decode("utf-8", errors="replace")
            if self._first_line:
                text = text.removeprefix("\ufeff")
                self._first_line = False
            yield text

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event, retry = self._data, self._event, self._retry
        self._data, self._event, self._retry = [], "", None
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self.last_event_id, retry)


def parse_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """The events of a stream of bytes; an event left without its blank line at the end of the stream is dropped (as the standard says)."""
    parser = EventParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
