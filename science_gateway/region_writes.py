"""What a Dask worker runs for a job: compute a region of the output with the job's app, encode it and store it.

Kept apart, with nothing but numpy, zarr's metadata and the workers' store,
because workers import it. The app (:mod:`science_gateway.apps`) returns the
region's values; here they are cut into the array's objects (a chunk, or a
shard of chunks), each encoded as zarr encodes the gateway's uncompressed
arrays and written with one PUT: zarr's own write of a chunk (its indexing and
codec pipeline) cost ten times the CPU of generating it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import google_crc32c
import numpy as np
import zarr
import zarr.storage
from obstore.exceptions import PermissionDeniedError
from zarr.core.metadata import ArrayV2Metadata, ArrayV3Metadata
from zarr.core.sync import sync

from . import results_objects

if TYPE_CHECKING:
    from .apps.base import App, Output

logger = logging.getLogger(__name__)

Selection = tuple[slice, ...]
# The array of a result's group, the one every job writes.
ARRAY_NAME = "data"
# A chunk's offset and length in a shard's index when the shard does not hold it.
_NO_CHUNK = 2**64 - 1
# Objects a task writes at once: the number of PUTs in flight at which one obstore client wrote the default job fastest.
WRITES_IN_FLIGHT = 16
# A task makes its objects in bands of about this many bytes (or one object), each band's PUTs running while the next is made.
BAND_BYTES = 2**20
# A task's region is about this large (under twice as large, as tasks are cut in
# whole rows of chunks), so that a worker's memory, a cancel's wait and the steps
# of progress stay small whatever the job's size.
MAX_TASK_BYTES = 8 * 2**20

# Runs whose remaining regions and bands must not be written, in this worker
# process. A task is not interrupted in the middle of a band, so a stopped job
# waits for its running tasks to end their band, and those that had not begun end at once through this set.
_stopped_runs: set[str] = set()


class ObjectsNotMade(RuntimeError):
    """Encoding a band's values into its objects failed (no store was asked anything); the cause as text, as :class:`StoreWriteFailed`."""


class StoreWriteFailed(OSError):
    """Storing chunks failed; the cause as text, because not every store library's errors pickle back to the client."""


@dataclass(frozen=True)
class ArrayTarget:
    """A job's array as its tasks write it: the results URL, the array's key under it, and zarr's metadata of the array.

    It holds no credential: each worker opens the results URL with its own (:mod:`results_objects`).
    """

    results_url: str
    path: str
    metadata: ArrayV2Metadata | ArrayV3Metadata

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.metadata.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.metadata.chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        return getattr(self.metadata, "shards", None)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.metadata.dtype.to_native_dtype())

    def key(self, position: Sequence[int]) -> str:
        """The key of the object at ``position`` in the grid of shards, or of chunks when unsharded."""
        return f"{self.path}/{self.metadata.encode_chunk_key(tuple(position))}"


def stop_run(run_id: str) -> None:
    """Run on every worker: the run's regions that have not begun are skipped."""
    _stopped_runs.add(run_id)


def _blocks_in(region: Selection, shape: Sequence[int], blocks: Sequence[int]) -> Iterator[tuple[tuple[int, ...], Selection]]:
    """Grid position and selection (cut at the array's edge) of every block, chunk or shard, in a region of whole blocks, in C order."""
    positions = [range(part.start // step, math.ceil(part.stop / step)) for part, step in zip(region, blocks, strict=True)]
    for position in itertools.product(*positions):
        yield position, tuple(slice(at * step, min((at + 1) * step, size)) for at, step, size in zip(position, blocks, shape, strict=True))


def chunks_in(region: Selection, shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[int, Selection]]:
    """Index and selection of every chunk in a region made of whole chunks, in C order."""
    grid = tuple(math.ceil(size / step) for size, step in zip(shape, chunks, strict=True))
    for position, selection in _blocks_in(region, shape, chunks):
        yield int(np.ravel_multi_index(position, grid)), selection


def chunk_selections(shape: Sequence[int], chunks: Sequence[int]) -> list[Selection]:
    """The region of every chunk, in C order (the chunk index is the position in this list)."""
    whole = tuple(slice(0, size) for size in shape)
    return [selection for _, selection in chunks_in(whole, shape, chunks)]


def task_regions(shape: Sequence[int], chunks: Sequence[int], n_tasks: int) -> list[Selection]:
    """Split the array into about ``n_tasks`` regions of whole chunks, cutting the first axis first.

    Fewer, larger tasks keep Dask's per-task cost out of the job's time, and
    a task writes the objects of its region concurrently.
    """
    cuts_per_axis = []
    remaining = n_tasks
    for size, step in zip(shape, chunks, strict=True):
        count = math.ceil(size / step)
        parts = max(1, min(count, remaining))
        bounds = [round(count * part / parts) for part in range(parts + 1)]
        cuts_per_axis.append([slice(start * step, min(stop * step, size)) for start, stop in itertools.pairwise(bounds)])
        remaining = math.ceil(remaining / parts)
    return list(itertools.product(*cuts_per_axis))


def _within(selection: Selection, region: Selection) -> Selection:
    """``selection`` of the array as a selection of the values of ``region``."""
    return tuple(slice(part.start - origin.start, part.stop - origin.start) for part, origin in zip(selection, region, strict=True))


def _chunk_major(values: np.ndarray, target: ArrayTarget) -> tuple[np.ndarray, tuple[int, ...]]:
    """The values of a block of whole chunks (cut at the array's edge) chunk after chunk, in C order, each chunk whole and
    padded with the fill value, raw little-endian values as zarr encodes the gateway's uncompressed arrays; and the block's grid of chunks.

    One reshape and one copy for the whole block: a chunk at a time, in Python, took
    the workers more CPU than generating the values.
    """
    chunks = target.chunks
    grid = tuple(math.ceil(size / step) for size, step in zip(values.shape, chunks, strict=True))
    covered = tuple(count * step for count, step in zip(grid, chunks, strict=True))
    if values.shape != covered:
        padded = np.full(covered, target.metadata.fill_value, dtype=target.dtype)
        padded[tuple(slice(0, size) for size in values.shape)] = values
        values = padded
    blocked = values.reshape(grid[0], chunks[0], grid[1], chunks[1]).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocked, dtype=target.dtype.newbyteorder("<")), grid


def _bytes(values: np.ndarray) -> memoryview:
    return values.data.cast("B")


def shard_object(values: np.ndarray, target: ArrayTarget) -> bytearray:
    """The object of one shard of ``target`` holding ``values``, encoded as zarr's sharding codec encodes the gateway's arrays.

    That is: each chunk's object (its raw values, see :func:`_chunk_major`), then
    the index, an (offset, length) pair of little-endian uint64 for every chunk of
    the shard in C order (2**64-1 twice for one wholly outside the array), then
    the index's crc32c. zarr would assemble the shard, then cut it into chunks
    again one by one, which took the workers twice the CPU of generating and storing it.
    """
    chunks, shards = target.chunks, target.shards
    assert shards is not None
    per_shard = tuple(size // step for size, step in zip(shards, chunks, strict=True))
    # The shard's values are cut at the array's edge: the chunks they cover are those it holds.
    blocked, held = _chunk_major(values, target)
    chunk_bytes = math.prod(chunks) * target.dtype.itemsize
    index = np.full((*per_shard, 2), _NO_CHUNK, dtype="<u8")
    index[: held[0], : held[1], 0] = np.arange(math.prod(held), dtype="<u8").reshape(held) * chunk_bytes
    index[: held[0], : held[1], 1] = chunk_bytes
    data = bytearray(blocked.nbytes + index.nbytes + 4)
    data[: blocked.nbytes] = _bytes(blocked)
    data[blocked.nbytes : blocked.nbytes + index.nbytes] = index.tobytes()
    data[blocked.nbytes + index.nbytes :] = np.uint32(google_crc32c.value(index.tobytes())).tobytes()
    return data


def region_objects(region: Selection, values: np.ndarray, target: ArrayTarget) -> list[tuple[str, bytes | bytearray | memoryview]]:
    """Key and bytes of every object of ``region``, whose values are ``values``: one per shard when sharded, else one per chunk."""
    if target.shards:
        blocks = _blocks_in(region, target.shape, target.shards)
        return [(target.key(position), shard_object(values[_within(selection, region)], target)) for position, selection in blocks]
    blocked, grid = _chunk_major(values, target)
    first = tuple(part.start // step for part, step in zip(region, target.chunks, strict=True))
    return [
        (target.key((first[0] + row, first[1] + column)), _bytes(blocked[row, column]))
        for row, column in itertools.product(range(grid[0]), range(grid[1]))
    ]


class AppFailed(RuntimeError):
    """The app's computation raised, or the app is not the one the gateway planned with; the message says which and why.

    Text only, as :class:`StoreWriteFailed`: the traceback is in the worker's log.
    """


@dataclass(frozen=True)
class AppTask:
    """What a task computes: the app (by name, version and class, for a worker to import), the job's parameters and output, and its sources' arrays."""

    app: str
    version: str
    # "module:qualified name" of the app's class.
    implementation: str
    parameters: dict[str, Any]
    output: Output
    # The parameter naming each source, and the key of the source's group under the results URL.
    sources: dict[str, str]


@functools.cache
def _app(task_app: str, version: str, implementation: str) -> App:
    """The worker's own instance of the app the gateway planned with; :class:`AppFailed` naming it when the worker's image has another."""
    module_name, _, qualified_name = implementation.partition(":")
    try:
        app_class: Any = functools.reduce(getattr, qualified_name.split("."), importlib.import_module(module_name))
    except (ImportError, AttributeError) as exc:
        raise AppFailed(
            f"app {task_app!r} version {version} is not installed on the Dask workers ({type(exc).__name__}: {exc}); "
            "the workers' image must offer the gateway's apps"
        ) from None
    if getattr(app_class, "version", None) != version:
        raise AppFailed(
            f"the Dask workers have app {task_app!r} version {getattr(app_class, 'version', None)}, and the gateway planned with version {version}; "
            "the workers' image must offer the gateway's apps"
        )
    app: App = app_class()
    return app


class _Sources:
    """A task's sources, each opened read-only from the results store when first asked for.

    Each through its group, whose metadata is the sign that it is complete: a
    source that is being deleted (that document goes first) fails the read,
    rather than reading missing chunks as fill values.
    """

    def __init__(self, results_url: str, groups: dict[str, str]) -> None:
        self._results_url = results_url
        self._groups = groups
        # Opened once a task, whose bands each read them: not a metadata GET each band.
        self._opened: dict[str, Any] = {}

    def __getitem__(self, parameter: str) -> Any:
        if parameter not in self._opened:
            store = zarr.storage.ObjectStore(results_objects.open_results(self._results_url), read_only=True)
            self._opened[parameter] = _result_group(store, self._groups[parameter])[ARRAY_NAME]
        return self._opened[parameter]


def _result_group(store: zarr.storage.ObjectStore, path: str) -> zarr.Group:
    """A result's group, opened by the documents of its own Zarr format alone: Zarr 3's, or else Zarr 2's.

    Not zarr's guess, which asks for both formats' documents at once: the workers'
    key may not list the bucket (results_workers_policy.json), and S3 refuses such
    a key a GET of any object that does not exist with 403, not 404.
    """
    try:
        return zarr.open_group(store=store, path=path, mode="r", zarr_format=3)
    except (FileNotFoundError, PermissionDeniedError):
        return zarr.open_group(store=store, path=path, mode="r", zarr_format=2)


def _computed(region: Selection, target: ArrayTarget, task: AppTask, sources: _Sources) -> np.ndarray:
    """The region's values as the app computes them, checked against the output's shape and dtype."""
    app = _app(task.app, task.version, task.implementation)
    expected = tuple(part.stop - part.start for part in region)
    try:
        values = np.asarray(app.compute(region, task.parameters, task.output, sources))
    except Exception as exc:
        logger.exception("app %s failed on region %s", task.app, region)
        message = f"app {task.app!r} failed: {type(exc).__name__}: {exc}"
    else:
        if values.shape == expected and np.can_cast(values.dtype, target.dtype, casting="safe"):
            return values
        message = (
            f"app {task.app!r} returned values of shape {list(values.shape)} and dtype {values.dtype} "
            f"for a region of shape {list(expected)} and dtype {target.dtype}"
        )
    raise AppFailed(message)


@dataclass(frozen=True)
class RegionWritten:
    """What a task did: the chunks it wrote, and its seconds in all and making its objects (the app's values, encoded).

    The rest of its seconds went to the PUTs that making the objects did not hide.
    """

    chunks: int
    seconds: float
    making_seconds: float


def bands(region: Selection, target: ArrayTarget) -> list[Selection]:
    """The region cut into bands of whole objects (chunks, or shards), in C order, each about ``BAND_BYTES`` or one object.

    A task makes a band's objects while the PUTs of the bands before it run:
    a job's time is then its PUTs, not its values' making followed by its PUTs.
    """
    unit = target.shards or target.chunks
    unit_bytes = math.prod(unit) * target.dtype.itemsize
    per_band = max(1, BAND_BYTES // unit_bytes) * unit[1]
    return [
        (slice(row, min(row + unit[0], region[0].stop)), slice(column, min(column + per_band, region[1].stop)))
        for row in range(region[0].start, region[0].stop, unit[0])
        for column in range(region[1].start, region[1].stop, per_band)
    ]


def write_region(region: Selection, *, run_id: str, target: ArrayTarget, task: AppTask) -> RegionWritten:
    """Compute ``region`` with the job's app and write it into the gateway's array ``target``, band after band, each band's objects at once.

    The chunks written are all of the region's, or, when the run was stopped, those of the bands made before (0 if it was stopped before it began).
    """
    started = time.perf_counter()
    store = results_objects.open_results(target.results_url)
    sources = _Sources(target.results_url, task.sources)
    made = [0, 0.0]  # chunks, seconds

    def band_writes(band: Selection) -> list[Callable[[], Awaitable[None]]]:
        if run_id in _stopped_runs:
            return []
        making = time.perf_counter()
        values = _computed(band, target, task, sources)
        try:
            objects = region_objects(band, values, target)
        except Exception as exc:  # noqa: BLE001 - any failure of the encoding, passed on as text
            raise ObjectsNotMade(f"encoding region {band} of job {run_id.partition('/')[0]!r} failed: {type(exc).__name__}: {exc}") from None
        made[0] += _chunks_of(band, target)
        made[1] += time.perf_counter() - making
        return [functools.partial(results_objects.put, store, key, data) for key, data in objects]

    failure: Exception
    try:
        sync(store_as_made([functools.partial(band_writes, band) for band in bands(region, target)]))
    except (AppFailed, ObjectsNotMade) as exc:
        failure = type(exc)(str(exc))
    except Exception as exc:  # noqa: BLE001 - any store library's error, passed on as text
        failure = StoreWriteFailed(results_objects.describe(exc))
    else:
        return RegionWritten(int(made[0]), time.perf_counter() - started, made[1])
    # Raised outside the except block: Dask pickles an error with its context, and not every library's errors pickle.
    raise failure


def _chunks_of(region: Selection, target: ArrayTarget) -> int:
    return math.prod(math.ceil((part.stop - part.start) / step) for part, step in zip(region, target.chunks, strict=True))


Write = Callable[[], Awaitable[None]]


async def store_as_made(batches: Sequence[Callable[[], Sequence[Write]]]) -> None:
    """Make each batch of writes (of chunks or shards) in a thread, and run its writes concurrently while the next is made;
    once a write or a making fails, begin no other, wait for those begun, and raise the first error.

    At most ``WRITES_IN_FLIGHT`` writes run at once, and the next batch is made
    only once the writes of this one have their places, so a task holds the
    bands of at most that many objects and the band being made.

    zarr's own write of a region (``array[region] = block``) gathers its chunk
    writes, and when one fails the others go on in the background, retrying
    against the store: a job failed by an S3 outage then had chunks of its old
    seed land, once S3 was back, in the new job of the same id. Nor does
    cancelling a write stop it: obstore's request goes on in its own runtime
    and its object lands after the cancel (seen with a local directory). So
    every write begun is waited for: when this returns, no write of the task is pending.
    """
    slots = asyncio.Semaphore(WRITES_IN_FLIGHT)
    failures: list[Exception] = []
    begun: set[asyncio.Task[None]] = set()

    async def store(write: Write) -> None:
        try:
            await write()
        except Exception as exc:  # noqa: BLE001 - raised once every write begun has ended
            failures.append(exc)
        finally:
            slots.release()

    try:
        for make in batches:
            for write in await asyncio.to_thread(make):
                await slots.acquire()
                if failures:
                    break
                task = asyncio.create_task(store(write))
                begun.add(task)
                task.add_done_callback(begun.discard)
            if failures:
                break
    finally:
        if begun:
            await asyncio.wait(set(begun))
    if failures:
        raise failures[0]


async def store_all_or_none_pending(writes: Sequence[Write]) -> None:
    """Run the writes concurrently, as :func:`store_as_made` does with one batch already made."""
    await store_as_made([lambda: writes])
