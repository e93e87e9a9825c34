"""What a Dask worker runs for a job: generate a region of chunks from their seeds and store it.

Kept apart, with nothing but numpy and zarr, because workers import it: chunk ``i`` of a
job with seed ``s`` is ``numpy.random.default_rng([s, i]).random(...)``, where
``i`` is the chunk's position in C order, so the same seed, shape and chunks
give a bit-identical array however the chunks are grouped into tasks, however
many workers share them and in whatever order they write.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

Selection = tuple[slice, ...]

# Runs whose remaining regions must not be written, in this worker process. A
# running task cannot be interrupted, so a stopped job waits for its tasks to
# end, and those that had not begun end at once through this set.
_stopped_runs: set[str] = set()


class StoreWriteFailed(OSError):
    """Storing chunks failed; the cause as text, because botocore's errors do not pickle back to the client."""


class NewResultStore(zarr.storage.WrapperStore):
    """The store a new result is written through: it reads nothing back.

    Zarr reads a shard before writing into it, as it would merge new chunks
    into an existing one; a new result's shards do not exist yet (each is
    written once, whole, by one task), and asking S3 costs a HEAD and a LIST
    a shard: 2 of a sharded default job's 9 requests.
    """

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> None:
        return None


def stop_run(run_id: str) -> None:
    """Run on every worker: the run's regions that have not begun are skipped."""
    _stopped_runs.add(run_id)


def _chunks_in(region: Selection, shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[int, Selection]]:
    """Index and selection of every chunk in a region made of whole chunks, in C order."""
    grid = tuple(math.ceil(size / step) for size, step in zip(shape, chunks, strict=True))
    positions = [range(part.start // step, math.ceil(part.stop / step)) for part, step in zip(region, chunks, strict=True)]
    for position in itertools.product(*positions):
        selection = tuple(
            slice(at * step, min((at + 1) * step, size)) for at, step, size in zip(position, chunks, shape, strict=True)
        )
        yield int(np.ravel_multi_index(position, grid)), selection


def chunk_selections(shape: Sequence[int], chunks: Sequence[int]) -> list[Selection]:
    """The region of every chunk, in C order (the chunk index is the position in this list)."""
    whole = tuple(slice(0, size) for size in shape)
    return [selection for _, selection in _chunks_in(whole, shape, chunks)]


def task_regions(shape: Sequence[int], chunks: Sequence[int], n_tasks: int) -> list[Selection]:
    """Split the array into about ``n_tasks`` regions of whole chunks, cutting the first axis first.

    Fewer, larger tasks keep Dask's per-task cost out of the job's time, and
    zarr writes the chunks of one region concurrently.
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


def random_chunk(seed: int, chunk_index: int, selection: Selection, dtype: str) -> np.ndarray:
    block_shape = tuple(region.stop - region.start for region in selection)
    return np.random.default_rng([seed, chunk_index]).random(block_shape, dtype=np.dtype(dtype))


def random_block(seed: int, selection: Selection, shape: Sequence[int], chunks: Sequence[int], dtype: str) -> np.ndarray:
    """The values of a region of whole chunks, each chunk made from its own seed."""
    parts = list(_chunks_in(selection, shape, chunks))
    if len(parts) == 1:
        return random_chunk(seed, parts[0][0], parts[0][1], dtype)
    block = np.empty(tuple(part.stop - part.start for part in selection), dtype=np.dtype(dtype))
    for chunk_index, chunk in parts:
        inside = tuple(slice(part.start - whole.start, part.stop - whole.start) for part, whole in zip(chunk, selection, strict=True))
        block[inside] = random_chunk(seed, chunk_index, chunk, dtype)
    return block


def write_random_region(region: Selection, *, run_id: str, target: Any, seed: int, dtype: str) -> int:
    """Generate every chunk of ``region`` and write them into the zarr array ``target``.

    A sharded array is written one whole shard at a time, so that zarr stores each
    shard as one object without reading it first; else one chunk at a time.
    Return the number of chunks written, or 0 when the run was stopped and nothing was written.
    """
    if run_id in _stopped_runs:
        return 0
    unit = target.shards or target.chunks
    writes = [
        (selection, random_block(seed, selection, target.shape, target.chunks, dtype))
        for _, selection in _chunks_in(region, target.shape, unit)
    ]
    try:
        sync(_store_all_or_none_pending(target.async_array, writes))
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
    else:
        return math.prod(math.ceil((part.stop - part.start) / step) for part, step in zip(region, target.chunks, strict=True))
    # Raised outside the except block: Dask pickles an error with its context, and botocore's do not pickle.
    raise StoreWriteFailed(cause)


async def _store_all_or_none_pending(target: zarr.AsyncArray, writes: list[tuple[Selection, np.ndarray]]) -> None:
    """Write the chunks (or shards) concurrently; once one fails, cancel the others and raise its error.

    zarr's own write of a region (``array[region] = block``) gathers its chunk
    writes, and when one fails the others go on in the background, retrying
    against the store: a job failed by an S3 outage then had chunks of its old
    seed land, once S3 was back, in the new job of the same id. A task group
    cancels them, so that when this returns no write of the region is pending.
    """
    slots = asyncio.Semaphore(zarr.config.get("async.concurrency"))

    async def store(selection: Selection, values: np.ndarray) -> None:
        async with slots:
            await target.setitem(selection, values)

    try:
        async with asyncio.TaskGroup() as group:
            for selection, values in writes:
                group.create_task(store(selection, values))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
