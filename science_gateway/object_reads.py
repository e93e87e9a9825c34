"""Reading one object of the results store, whole or a byte range, as a stream of blocks: from S3 or a local directory.

The gateway serves a finished result's objects to its owner over HTTP
(``result_reads.py``) and never holds one whole in memory: a read is at most a
block (``BLOCK_BYTES``) at a time. S3 reads go through botocore's client,
configured by the standard ``AWS_*`` variables as everywhere in the gateway:
obstore, which writes the objects, refuses the ranged answers of S3 servers that
send the requested bytes with status 200 instead of 206 (rclone's), and a
range is what every sharded read asks for.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from .results_objects import CONFIGURED_BY

# A block of a streamed object: large enough that the per-block cost is nothing, small enough to stay out of memory's way.
BLOCK_BYTES = 1 << 20
# Connections kept to the store for reads: more readers than this at once open and drop connections of their own.
READ_CONNECTIONS = 128


class RangeNotSatisfiable(ValueError):
    """The requested bytes are not in the object; ``size`` is the object's size."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the object has {size} bytes")
        self.size = size


@dataclass
class ObjectInfo:
    size: int
    # The store's entity tag, quoted as HTTP sends it, and the object's time of last change.
    etag: str
    last_modified: datetime


@dataclass
class ObjectRead:
    """An answer to a read: the object's validators, which of its bytes follow (``start`` to ``stop``, exclusive), and the blocks."""

    info: ObjectInfo
    start: int
    stop: int
    blocks: Iterator[bytes]
    close: Callable[[], None]


class ObjectReader:
    """Reads objects under the results URL (``s3://bucket/prefix`` or ``file:///path``) by their key under it."""

    def __init__(self, results_url: str) -> None:
        parsed = urlparse(results_url)
        self._s3 = parsed.scheme == "s3"
        if self._s3:
            self._bucket = parsed.netloc
            self._prefix = parsed.path.strip("/")
        else:
            self._directory = Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(results_url)

    def info(self, key: str) -> ObjectInfo:
        """The object's size and validators; :class:`FileNotFoundError` if there is none."""
        if not self._s3:
            return _file_info(self._file(key))
        try:
            return _s3_info(_s3_client().head_object(Bucket=self._bucket, Key=self._s3_key(key)))
        except _s3_client().exceptions.ClientError as exc:
            _raise_not_found(exc, key)
            raise

    def read(self, key: str, byte_range: str | None = None) -> ObjectRead:
        """The object, or the bytes ``byte_range`` (an HTTP ``bytes=`` range of one part) names.

        :class:`FileNotFoundError` if there is no object, :class:`RangeNotSatisfiable` if none of its bytes is in the range.
        """
        if not self._s3:
            return _read_file(self._file(key), byte_range)
        client = _s3_client()
        try:
            answer = self._get(key, byte_range)
        except client.exceptions.ClientError as exc:
            _raise_not_found(exc, key)
            if byte_range is None or exc.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            # Some stores (rclone's) refuse a suffix longer than the object, which HTTP reads as the whole
            # object: the range as HTTP means it, or RangeNotSatisfiable, against the object's size.
            start, stop = resolve_range(byte_range, self.info(key).size)
            answer = self._get(key, f"bytes={start}-{stop - 1}")
        info = _s3_info(answer)
        body = answer["Body"]
        length = answer["ContentLength"]
        # The answer's Content-Range says which bytes came, whatever the status: some servers send a range with 200.
        content_range = answer.get("ContentRange")
        if content_range:
            span, _, total = content_range.removeprefix("bytes ").partition("/")
            first, _, _ = span.partition("-")
            info.size, start = int(total), int(first)
        else:
            start = 0
        return ObjectRead(info, start, start + length, body.iter_chunks(BLOCK_BYTES), body.close)

    def _get(self, key: str, byte_range: str | None) -> dict[str, Any]:
        return _s3_client().get_object(Bucket=self._bucket, Key=self._s3_key(key), **({"Range": byte_range} if byte_range else {}))

    def _s3_key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _file(self, key: str) -> Path:
        return self._directory / key


def _s3_client() -> Any:
    """One botocore client for the process's reads (thread-safe, with a pool of connections for concurrent readers), anew when the environment changes."""
    return _client_for(tuple(os.environ.get(name) for name in CONFIGURED_BY))


@functools.lru_cache(maxsize=8)
def _client_for(environment: tuple[str | None, ...]) -> Any:
    import botocore.config
    import botocore.session

    config = botocore.config.Config(max_pool_connections=READ_CONNECTIONS, retries={"max_attempts": 3, "mode": "standard"})
    return botocore.session.get_session().create_client("s3", config=config)


def _raise_not_found(exc: Any, key: str) -> None:
    if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
        raise FileNotFoundError(key) from None


def _s3_info(answer: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(size=answer["ContentLength"], etag=answer["ETag"], last_modified=answer["LastModified"])


def _file_info(path: Path) -> ObjectInfo:
    if not path.is_file():
        raise FileNotFoundError(str(path))
    stat = path.stat()
    tag = hashlib.sha256(f"{stat.st_mtime_ns}-{stat.st_size}-{stat.st_ino}".encode()).hexdigest()[:32]
    return ObjectInfo(size=stat.st_size, etag=f'"{tag}"', last_modified=datetime.fromtimestamp(int(stat.st_mtime), UTC))


def _read_file(path: Path, byte_range: str | None) -> ObjectRead:
    info = _file_info(path)
    start, stop = resolve_range(byte_range, info.size) if byte_range else (0, info.size)
    handle = path.open("rb")
    handle.seek(start)

    def blocks() -> Iterator[bytes]:
        left = stop - start
        while left > 0:
            block = handle.read(min(BLOCK_BYTES, left))
            if not block:
                return
            left -= len(block)
            yield block

    return ObjectRead(info, start, stop, blocks(), handle.close)


def resolve_range(byte_range: str, size: int) -> tuple[int, int]:
    """The bytes (start, stop exclusive) that a one-part ``bytes=`` range names in an object of ``size`` bytes, as S3 reads it."""
    first, _, last = byte_range.removeprefix("bytes=").partition("-")
    if not first:
        start, stop = max(0, size - int(last)), size
    else:
        start, stop = int(first), min(size, int(last) + 1) if last else size
    if start >= size or stop <= start:
        raise RangeNotSatisfiable(size)
    return start, stop


def http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)

