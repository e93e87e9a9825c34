"""A finished job's result read over HTTP: each object of its Zarr group, streamed, to its owner (and admins) only.

A record's ``http_url`` is its result's Zarr group, so that in a notebook
``xr.open_zarr(job["http_url"], storage_options={"headers": {"Authorization": f"token {token}"}})``
opens it with no storage key at all: fsspec's HTTP filesystem asks for the
group's ``zarr.json`` and then for each chunk, or, for a sharded array, for each
shard's index and inner chunks by byte range. Who may read is decided before
this module is asked (``gateway.py``: another user's job is not found); here,
which objects and which bytes:

- only the objects of a job's Zarr group: its metadata documents and its array's
  objects under ``data/``, by keys of plain path segments inside the job's own place;
- ``Range`` of one part (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``), answered
  ``206`` with ``Content-Range``, or ``416`` beyond the object; a range of
  several parts, or one that ``If-Range`` says is stale, gets the whole object;
- ``ETag`` and ``Last-Modified`` from the store, ``304`` for a matching ``If-None-Match``;
- bodies streamed a block at a time, never a whole object in memory;
- at most ``GATEWAY_MAX_READS`` objects sent at once, ``GATEWAY_MAX_READS_PER_OWNER``
  to one reader: one more waits briefly for a place, then gets ``429``; the place
  is held until the body is sent or the reader has gone, and a reader that takes
  no block for ``SEND_TIMEOUT_SECONDS`` is cut off, so that no stalled reader holds
  a thread for ever.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

from flask import Request, Response
from werkzeug.http import unquote_etag

from .admission import Places
from .errors import GatewayError
from .job_records import DONE, JobRecord
from .object_reads import ObjectInfo, ObjectReader, RangeNotSatisfiable, http_date
from .results_store import ARRAY_NAME, StorageError, describe_storage_failure

# Zarr's metadata documents, by name; every other object is bytes.
METADATA_NAMES = ("zarr.json", ".zmetadata", ".zgroup", ".zarray", ".zattrs")
# A key is a metadata document of the group, or plain path segments under its array: nothing climbs out of the job's place.
KEY_PATTERN = re.compile(rf"(?:{'|'.join(map(re.escape, METADATA_NAMES))}|{ARRAY_NAME}/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*)")
# What a refused read is told to wait: reads are short, a place comes free soon.
READ_RETRY_SECONDS = 1
# A reader that takes no block of an object for this long is cut off: a block (1 MiB) at 17 kB/s at least.
SEND_TIMEOUT_SECONDS = 60


class ResultObjectNotFound(GatewayError, LookupError):
    """The job's result has no object of this key."""

    status, code = 404, "object_not_found"


class JobNotDone(GatewayError, RuntimeError):
    """The job has no result to read or draw yet (or none at all: it failed or was cancelled)."""

    status, code = 409, "job_not_done"

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record

    def details(self) -> dict[str, Any]:
        return {"job": self.record}


class RangeOutsideObject(GatewayError, ValueError):
    """No byte of the requested range is in the object."""

    status, code = 416, "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the object has {size} bytes; ask for a range that starts below that")
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class ResultReads:
    """Serves the objects of finished results under one results URL, within each owner's share of reads."""

    def __init__(self, results_url: str, places: Places) -> None:
        self._objects = ObjectReader(results_url)
        self.places = places

    def response(
        self, record: JobRecord, job_json: dict[str, Any], key: str, request: Request, reader: str | None, connection: socket.socket | None
    ) -> Response:
        """The answer to ``reader``'s GET or HEAD of ``key`` under the result of ``record`` (whose JSON is ``job_json``).

        ``connection`` is the reader's socket, where the server gives it: a send to it that stalls is cut off.
        """
        if not KEY_PATTERN.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
            raise ResultObjectNotFound(f"the result of job {record.job_id!r} has no object {key[:100]!r}; its objects are such as zarr.json")
        if record.status != DONE:
            raise JobNotDone(f"job {record.job_id!r} is {record.status}; its result can be read once it is done", job_json)
        held = ExitStack()
        held.enter_context(self.places.place(reader, "read fewer objects at once (zarr: the async.concurrency setting)", retry_after=READ_RETRY_SECONDS))
        try:
            response = self._answer(f"{record.place}/{key}", key, request, held.close)
        except BaseException:
            held.close()
            raise
        if not response.direct_passthrough:
            # Nothing left to send (HEAD, 304): the place comes free now; a body's is given back by the body.
            held.close()
        elif connection is not None:
            connection.settimeout(SEND_TIMEOUT_SECONDS)
        return response

    def _answer(self, path: str, key: str, request: Request, release: Callable[[], None]) -> Response:
        try:
            return self._send(path, key, request, release)
        except FileNotFoundError:
            raise ResultObjectNotFound(f"the result has no object {key!r}") from None
        except RangeNotSatisfiable as exc:
            raise RangeOutsideObject(exc.size) from None
        except GatewayError:
            raise
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"reading {key!r} of a result failed", exc)) from exc

    def _send(self, path: str, key: str, request: Request, release: Callable[[], None]) -> Response:
        byte_range = _one_range(request)
        if request.method == "HEAD" or request.if_none_match or request.if_range.etag or request.if_range.date:
            info = self._objects.info(path)
            if request.if_none_match.contains_weak(unquote_etag(info.etag)[0] or ""):
                return _headers(Response(status=304), info, key)
            if not _still_current(request, info):
                byte_range = None
            if request.method == "HEAD":
                response = _headers(Response(status=200), info, key)
                response.content_length = info.size
                return response
        read = self._objects.read(path, byte_range)
        # Passed through to the server as it is, which closes it when the body is sent or the reader has gone.
        body = Body(read.blocks, [read.close, release])
        partial = byte_range is not None
        response = _headers(Response(body, status=206 if partial else 200, direct_passthrough=True), read.info, key)
        response.content_length = read.stop - read.start
        if partial:
            response.headers["Content-Range"] = f"bytes {read.start}-{read.stop - 1}/{read.info.size}"
        return response


class Body:
    """An object's blocks as the server sends them: what they hold is given back after the last block or at close, whichever comes first.

    A WSGI server closes a body whether it was sent whole or its reader went away; a
    client that reads it whole and never closes it (Werkzeug's test client) gives it back too.
    """

    def __init__(self, blocks: Iterator[bytes], on_close: list[Callable[[], None]]) -> None:
        self._blocks = blocks
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._blocks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()


def _one_range(request: Request) -> str | None:
    """The request's range as a ``bytes=`` header of one part; None to send the whole object (no range, or several parts)."""
    requested = request.range
    if requested is None or requested.units != "bytes" or len(requested.ranges) != 1:
        return None
    start, stop = requested.ranges[0]
    if start < 0:
        return f"bytes={start}"
    return f"bytes={start}-" if stop is None else f"bytes={start}-{stop - 1}"


def _still_current(request: Request, info: ObjectInfo) -> bool:
    """Whether an ``If-Range`` (absent: yes) names the object as it is, so that the range may be sent."""
    condition = request.if_range
    if condition.etag:
        tag, weak = unquote_etag(info.etag)
        return not weak and condition.etag == tag
    if condition.date:
        return int(condition.date.timestamp()) == int(info.last_modified.timestamp())
    return True


def _headers(response: Response, info: ObjectInfo, key: str) -> Response:
    response.headers["ETag"] = info.etag
    response.headers["Last-Modified"] = http_date(info.last_modified)
    response.headers["Accept-Ranges"] = "bytes"
    # A user's own result, asked about again each time: a job deleted and run again under its id is another result.
    response.headers["Cache-Control"] = "private, no-cache"
    response.mimetype = "application/json" if key.rsplit("/", 1)[-1] in METADATA_NAMES else "application/octet-stream"
    return response
