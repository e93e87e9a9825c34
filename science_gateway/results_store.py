"""Where job results live: one Zarr group per job under the results URL.

Layout of a job's result at ``<results_url>/<place>``, where the place is
``.users/<owner>/<job_id>`` for a job of a named owner (the owner's name encoded
by :func:`owner_prefix`: each owner's ids are their own, and no two owners'
places meet), and the job id alone without authentication: a Zarr group holding one
array, ``data``, with dimension names ``("y", "x")``, so that both
``zarr.open_group(url)["data"]`` and ``xarray.open_zarr(url)`` open it. The
group's metadata, consolidated, is written after the last chunk: a result that
has it is complete, and an unfinished one has none. Its pictures, once first
asked for, are at ``<results_url>/.previews/<place>/<finished at, digits>-<size>.png``.

Each job's record (its status and parameters, as JSON) is kept at
``<results_url>/.jobs/<record name>`` (:func:`record_name`), so that the jobs outlive the process.

S3 credentials and endpoint are never passed in code: botocore (s3fs) and
obstore (:mod:`results_objects`) read the standard ``AWS_*`` variables, on the
gateway and on each worker, so no secret travels inside a task graph.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import fsspec
import zarr
import zarr.storage
from fsspec.implementations.local import LocalFileSystem
from zarr.core.common import ZarrFormat
from zarr.core.metadata import ArrayV2Metadata, ArrayV3Metadata

from . import results_objects
from .errors import DependencyUnavailable
from .region_writes import ARRAY_NAME, ArrayTarget
from .settings import REPLICA_ID_PATTERN

if TYPE_CHECKING:
    from .apps.base import Output

# Consolidated metadata is what lets xarray.open_zarr open a result with one read
# and without a warning; zarr-python reads it in format 3 too, so its caveat that
# the format 3 specification does not define it is known and accepted here.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)

DIMENSION_NAMES = ("y", "x")
# A result group's own documents in Zarr 3 and 2, written last, when every chunk is stored.
GROUP_DOCUMENTS = ("zarr.json", ".zmetadata", ".zgroup", ".zattrs")
# Of those, the consolidated metadata of Zarr 3 and 2: written after the others, the sign of a complete result.
COMPLETION_MARKERS = ("zarr.json", ".zmetadata")
# Job records, pictures and owners' results sit beside the flat results, under prefixes
# no job id can take (ids never start with ".").
RECORDS_PREFIX = ".jobs"
# Records read at once at start-up.
RECORDS_PER_READ = 1000
PREVIEWS_PREFIX = ".previews"
# Each replica's lease: an object it rewrites every few seconds (:mod:`replicas`).
REPLICAS_PREFIX = ".replicas"
OWNERS_PREFIX = ".users"
# Characters of an owner's name kept as they are in its prefix; every other byte is "_" and two hex digits.
_KEPT_IN_PREFIX = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def owner_prefix(owner: str) -> str:
    """Where an owner's results go: one path segment per name, and no two names share one.

    Hub user names may hold ".", "/" or any character: encoded, none becomes
    another prefix (".jobs", "..") or a path of more segments.
    """
    encoded = "".join(char if char in _KEPT_IN_PREFIX else "".join(f"_{byte:02x}" for byte in char.encode()) for char in owner)
    return f"{OWNERS_PREFIX}/{encoded}"


def place_for(job_id: str, owner: str | None) -> str:
    """The place of a new job's result under the results URL: under its owner's prefix, when it has one."""
    return job_id if owner is None else f"{owner_prefix(owner)}/{job_id}"


def record_name(owner: str | None, job_id: str) -> str:
    """A job record's name under the records prefix: ``<job_id>.json``, under its owner's prefix when it has one.

    Records of owners from before each owner had ids of their own are named
    ``<job_id>.json`` too; the job manager renames them at start-up.
    """
    return f"{job_id}.json" if owner is None else f"{owner_prefix(owner)}/{job_id}.json"


@dataclass(frozen=True)
class PendingResult:
    """A job's array as its tasks write it, and the metadata documents of the array and its group."""

    record_name: str
    place: str
    target: ArrayTarget
    array_metadata: dict[str, bytes]
    group_metadata: dict[str, bytes]


class RecordChanged(Exception):
    """A job record changed in the store since this replica read or wrote it: another replica wrote it first."""


class StorageError(DependencyUnavailable, RuntimeError):
    """The results store failed or cannot be reached; the message names the cause.

    A request it fails answers ``503`` with ``Retry-After``, ``error.dependency`` ``results_store`` (or
    ``job_records``: the records, read from the store, are not read yet): the store is shared, and its
    outage is no fault of this gateway's nor the caller's, who tries again. A job that failed on it is
    answered ``502`` (``recorded_status``): that failure is the job's outcome, kept in its record, not an
    outage of now; submitting the id again runs it anew, which a blind retry should not do for the caller.
    """

    code = "storage_error"
    recorded_status = 502

    def __init__(self, message: str, dependency: str = "results_store") -> None:
        super().__init__(message)
        self.dependency = dependency


def describe_storage_failure(action: str, exc: BaseException) -> str:
    """A message naming the results store as the cause, what failed and why, with any secret key taken out."""
    message = f"results store error: {action}: {results_objects.describe(exc)}"
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return message.replace(secret, "***") if secret else message


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


@functools.lru_cache(maxsize=64)
def _new_array_metadata(
    shape: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...] | None, dtype: str, zarr_format: ZarrFormat
) -> tuple[ArrayV2Metadata | ArrayV3Metadata, tuple[tuple[str, bytes], ...], tuple[tuple[str, bytes], ...]]:
    """The array's zarr metadata, and the documents of the array and of its group, made by zarr in memory.

    The same for every job of these parameters: made once (it took 1.7 ms a job).
    """
    documents: dict[str, Any] = {}
    group = zarr.create_group(zarr.storage.MemoryStore(documents), zarr_format=zarr_format)
    # Zarr 2 has no dimension names; xarray reads them from an attribute instead.
    # Its chunk keys are "0.0" already; zarr 3's would be "c/0/0" (see begin_result).
    by_format: dict[str, Any] = (
        {"dimension_names": DIMENSION_NAMES, "chunk_key_encoding": {"name": "default", "separator": "."}}
        if zarr_format == 3
        else {"attributes": {"_ARRAY_DIMENSIONS": list(DIMENSION_NAMES)}}
    )
    # Uncompressed: random numbers barely compress (zstd saved 11 % of a chunk's
    # bytes), and compressing them took about a quarter of the workers' CPU per job.
    in_memory = group.create_array(ARRAY_NAME, shape=shape, chunks=chunks, shards=shards, dtype=dtype, compressors=None, **by_format)
    zarr.consolidate_metadata(group.store)
    stored = {key: buffer.to_bytes() for key, buffer in documents.items()}
    in_array = tuple((key, document) for key, document in stored.items() if key.startswith(f"{ARRAY_NAME}/"))
    return in_memory.metadata, in_array, tuple((key, document) for key, document in stored.items() if key not in dict(in_array))


class ResultsStore:
    """The job results under one S3 prefix or local directory."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme == "s3":
            self.url = url.rstrip("/")
            # Listings are not cached: an existence check must see the store as it is now.
            self._fs: fsspec.AbstractFileSystem = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)
            # Readiness must answer within a probe's timeout, not after botocore's
            # and s3fs's retries against a store that is down (28 s, measured).
            self._probe_fs: fsspec.AbstractFileSystem = fsspec.filesystem(
                "s3",
                skip_instance_cache=True,
                use_listings_cache=False,
                config_kwargs={"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1}},
            )
            self._probe_fs.retries = 1  # s3fs's own retries, a class setting
            self._root = self.url[len("s3://") :]
            # A prefix under the bucket exists only once something is written there.
            self._location = self._root.split("/", 1)[0]
        else:
            local = Path(parsed.path if parsed.scheme == "file" else url).resolve()
            self.url = local.as_uri()
            self._fs = self._probe_fs = LocalFileSystem(auto_mkdir=True)
            self._root = str(local)
            self._location = self._root

    @property
    def _objects(self) -> results_objects.ObjectStore:
        # The requests on a job's path (its existence check, records and metadata) go through
        # obstore, as the workers' writes do: a small PUT took 0.5 ms against s3fs's 1.5 ms.
        # Opened at the first request: a local directory must exist by then, not at start-up.
        return results_objects.open_results(self.url)

    def url_for(self, place: str) -> str:
        """The URL of the result at ``place``: a job id, or ``<owner>/<job_id>``."""
        return f"{self.url}/{place}"

    def _path(self, place: str) -> str:
        return f"{self._root}/{place}"

    def check(self) -> None:
        """Raise :class:`StorageError` unless the results location exists and answers."""
        try:
            found = self._probe_fs.exists(self._location) or self._probe_fs.isdir(self._location)
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"{self.url} did not answer", exc)) from exc
        if not found:
            raise StorageError(f"results location {self.url} does not exist; create the bucket or directory first")

    def exists(self, place: str) -> bool:
        """True when anything, complete or not, is stored under the result's prefix."""
        try:
            return results_objects.any_under(self._objects, f"{place}/")
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"checking {self.url_for(place)} failed", exc)) from exc

    def pending_result(self, record_name: str, place: str, output: Output, zarr_format: ZarrFormat) -> PendingResult:
        """A new job's array, bound to its place in the store; nothing is written here.

        The metadata is made by zarr in memory and written by :meth:`begin_result`
        and :meth:`mark_complete`, so the store is never asked whether a document
        exists, and an unfinished result has no group metadata.
        """
        metadata, array_documents, group_documents = _new_array_metadata(output.shape, output.chunks, output.shards, output.dtype, zarr_format)
        return PendingResult(
            record_name=record_name,
            place=place,
            target=ArrayTarget(self.url, f"{place}/{ARRAY_NAME}", metadata),
            array_metadata=dict(array_documents),
            group_metadata=dict(group_documents),
        )

    def begin_result(self, result: PendingResult, record: dict[str, Any] | None) -> None:
        """Save the job's record and its array's metadata, before any chunk is written.

        S3 servers that keep objects as files (rclone's, for one) sometimes fail,
        or hang on, concurrent writes that create the same new directory. So the
        array's prefix is made by one write, here, and every chunk then goes into
        it (the chunk keys have no "/" of their own). The record, when given, is saved alongside
        (a replica on a shared store has saved it already, conditionally), and Zarr 2's second array document after the first.
        """
        failure = f"starting {self.url_for(result.place)} failed"
        (first_key, first_document), *rest = self._documents(result, result.array_metadata).items()
        record_document = {} if record is None else {self._record_path(result.record_name): _json(record)}
        self._write({**record_document, first_key: first_document}, failure)
        if rest:
            self._write(dict(rest), failure)

    def mark_complete(self, result: PendingResult) -> None:
        """Write the group's metadata, consolidated: the sign that every chunk is stored.

        The consolidated document goes last: a result that has it is whole (:meth:`is_complete`).
        """
        failure = f"finishing {self.url_for(result.place)} failed"
        documents = self._documents(result, result.group_metadata)
        markers = {path: document for path, document in documents.items() if path.rsplit("/", 1)[-1] in COMPLETION_MARKERS}
        if others := {path: document for path, document in documents.items() if path not in markers}:
            self._write(others, failure)
        self._write(markers, failure)

    def is_complete(self, place: str) -> bool:
        """Whether the result at ``place`` has its completion marker: every chunk of it is stored."""
        try:
            return any(self._fs.exists(f"{self._path(place)}/{marker}") for marker in COMPLETION_MARKERS)
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"checking {self.url_for(place)} failed", exc)) from exc

    def _documents(self, result: PendingResult, documents: dict[str, bytes]) -> dict[str, bytes]:
        return {f"{self._path(result.place)}/{key}": document for key, document in documents.items()}

    def _write(self, objects: dict[str, bytes], failure: str) -> None:
        keys = {path.removeprefix(f"{self._root}/"): data for path, data in objects.items()}
        try:
            results_objects.put_all(self._objects, keys)
        except Exception as exc:
            raise StorageError(describe_storage_failure(failure, exc)) from exc

    def delete(self, place: str) -> None:
        """Remove everything stored for the result at ``place``, its pictures included.

        The group's metadata, the sign that the result is complete, goes first:
        a deletion cut short leaves a result that reads as incomplete (jobs that
        read it fail), never one with chunks missing that read as fill values.
        """
        try:
            markers = [path for path in (f"{self._path(place)}/{name}" for name in GROUP_DOCUMENTS) if self._fs.exists(path)]
            if markers:
                self._fs.rm(markers)
            for path in (self._path(place), self._previews_path(place)):
                if self._fs.exists(path):
                    self._fs.rm(path, recursive=True)
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"deleting {self.url_for(place)} failed", exc)) from exc

    def _previews_path(self, place: str) -> str:
        # Outside the result's group, where zarr would warn of an object it does not know.
        return f"{self._root}/{PREVIEWS_PREFIX}/{place}"

    def _preview_path(self, place: str, run: str, size: str) -> str:
        # Named by the run, so that a picture drawn of an earlier run of the id is never shown.
        return f"{self._previews_path(place)}/{''.join(filter(str.isdigit, run))}-{size}.png"

    def read_preview(self, place: str, run: str, size: str) -> bytes | None:
        """The stored picture of the finished run ``run`` (its finishing time) of a result, or None if none is stored yet."""
        try:
            return self._fs.cat_file(self._preview_path(place, run, size))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"reading the preview of {self.url_for(place)} failed", exc)) from exc

    def write_preview(self, place: str, run: str, size: str, png: bytes) -> None:
        self._write({self._preview_path(place, run, size): png}, f"saving the preview of {self.url_for(place)} failed")

    def _record_path(self, name: str) -> str:
        return f"{self._root}/{RECORDS_PREFIX}/{name}"

    def write_record(self, name: str, record: dict[str, Any], expected: str | None = None) -> str | None:
        """Save a job record; its new version (ETag) when ``expected`` made the write conditional.

        ``expected``: None writes whatever is stored; :data:`results_objects.CREATE` or the
        version last read makes the write :class:`RecordChanged` if another replica wrote first.
        """
        failure = f"saving the job record {name!r} failed"
        if expected is None:
            self._write({self._record_path(name): _json(record)}, failure)
            return None
        try:
            return results_objects.put_if(self._objects, f"{RECORDS_PREFIX}/{name}", _json(record), expected)
        except results_objects.VersionChanged:
            raise RecordChanged(f"job record {name!r} was changed by another replica") from None
        except Exception as exc:
            raise StorageError(describe_storage_failure(failure, exc)) from exc

    def read_record(self, name: str) -> tuple[bytes, str] | None:
        """A job record as stored now and its version; None if there is none."""
        try:
            return results_objects.get_versioned(self._objects, f"{RECORDS_PREFIX}/{name}")
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"reading the job record {name!r} failed", exc)) from exc

    def record_versions(self) -> dict[str, str]:
        """Each stored record's name and version: one listing, no record read."""
        try:
            # With s3fs, as read_records lists: obstore stops a whole listing at one key it cannot parse.
            found = self._fs.find(f"{self._root}/{RECORDS_PREFIX}/", detail=True)
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"listing the job records in {self.url} failed", exc)) from exc
        prefix = f"{self._root}/{RECORDS_PREFIX}/"
        return {path.removeprefix(prefix): str(info.get("ETag", "")) for path, info in found.items() if path.endswith(".json")}

    def has_conditional_writes(self) -> bool:
        """Whether the store refuses a create of an object that exists and a replace of one that changed.

        Tried on an object of its own: some S3 servers (rclone's) ignore ``If-None-Match`` and ``If-Match``.
        """
        key = f"{REPLICAS_PREFIX}/.probe-{secrets.token_hex(8)}"
        try:
            first = results_objects.put_if(self._objects, key, b"1", results_objects.CREATE)
            refused = 0
            for expected in (results_objects.CREATE, f'"{secrets.token_hex(16)}"'):
                try:
                    results_objects.put_if(self._objects, key, b"2", expected)
                except results_objects.VersionChanged:
                    refused += 1
            results_objects.put_if(self._objects, key, b"3", first)
            return refused == 2
        except (results_objects.VersionChanged, NotImplementedError):
            return False
        except Exception as exc:
            # A local directory has no replace-if-unchanged: obstore says so by its error's name.
            if "not yet implemented" in str(exc):
                return False
            raise StorageError(describe_storage_failure(f"trying conditional writes in {self.url} failed", exc)) from exc
        finally:
            with contextlib.suppress(Exception):
                self._fs.rm(f"{self._root}/{key}")

    def write_replica(self, replica: str, content: bytes) -> None:
        """Renew a replica's lease: its object under the replicas prefix."""
        self._write({f"{self._root}/{REPLICAS_PREFIX}/{replica}.json": content}, f"renewing the lease of replica {replica!r} in {self.url} failed")

    def replica_versions(self) -> dict[str, str]:
        """Each replica with a lease object, and that object's version; objects no replica could have written are left out."""
        prefix = f"{self._root}/{REPLICAS_PREFIX}/"
        try:
            # With s3fs, as record_versions lists: obstore stops a whole listing at one key it cannot parse.
            found = self._fs.find(prefix, detail=True)
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"listing the replicas in {self.url} failed", exc)) from exc
        names = {path.removeprefix(prefix).removesuffix(".json"): str(info.get("ETag", "")) for path, info in found.items() if path.endswith(".json")}
        return {name: version for name, version in names.items() if re.fullmatch(REPLICA_ID_PATTERN, name)}

    def read_replica_start(self, replica: str) -> str:
        """When a replica says it started, from its lease; "" if the lease is gone or says nothing usable."""
        try:
            found = results_objects.get_versioned(self._objects, f"{REPLICAS_PREFIX}/{replica}.json")
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"reading the lease of replica {replica!r} in {self.url} failed", exc)) from exc
        try:
            # Untrusted, as every object in the bucket: one that says nothing usable says it started at no time.
            started = json.loads(found[0]).get("started_at") if found else None
        except (ValueError, AttributeError, RecursionError):
            return ""
        return started if isinstance(started, str) and len(started) <= 40 else ""

    def delete_replica(self, replica: str) -> None:
        try:
            # Through the probe's client, one attempt with short timeouts: a stop must not wait out botocore's retries on a store that is down.
            self._probe_fs.rm(f"{self._root}/{REPLICAS_PREFIX}/{replica}.json")
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"removing the lease of replica {replica!r} in {self.url} failed", exc)) from exc

    def read_records(self, versions: dict[str, str] | None = None) -> Iterator[tuple[str, bytes]]:
        """Every stored job record as it is stored, by its name under the records prefix (:func:`record_name`).

        Fetched ``RECORDS_PER_READ`` at a time, concurrently: a start-up never holds every record's bytes at once.
        ``versions``, when given, gets each record's version, for writes conditional on it.
        """
        prefix = f"{RECORDS_PREFIX}/"
        failure = f"reading the job records in {self.url} failed"
        try:
            # Listed with s3fs: obstore stops a whole listing at one key it cannot parse (".jobs/a//b.json").
            keys = [path.removeprefix(f"{self._root}/") for path in self._fs.find(f"{self._root}/{prefix}") if path.endswith(".json")]
        except Exception as exc:
            raise StorageError(describe_storage_failure(failure, exc)) from exc
        for start in range(0, len(keys), RECORDS_PER_READ):
            try:
                contents = results_objects.get_all(self._objects, keys[start : start + RECORDS_PER_READ])
            except Exception as exc:
                raise StorageError(describe_storage_failure(failure, exc)) from exc
            for key, (content, version) in contents.items():
                if versions is not None:
                    versions[key.removeprefix(prefix)] = version
                yield key.removeprefix(prefix), content

    def delete_record(self, name: str) -> None:
        try:
            self._fs.rm(self._record_path(name))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(describe_storage_failure(f"deleting the job record {name!r} failed", exc)) from exc
