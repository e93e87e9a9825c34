"""What a Dask worker runs for one chunk: generate it from its own seed and store it.

Kept apart, with nothing but numpy, because workers import it: chunk ``i`` of a
job with seed ``s`` is ``numpy.random.default_rng([s, i]).random(...)``, so the
same seed, shape and chunks give a bit-identical array however many workers
share the work and in whatever order they write.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

Selection = tuple[slice, ...]

# Runs whose remaining chunks must not be written, in this worker process. A
# running task cannot be interrupted, so a stopped job waits for its tasks to
# end, and those that had not begun end at once through this set.
_stopped_runs: set[str] = set()


def stop_run(run_id: str) -> None:
    """Run on every worker: the run's chunks that have not begun are skipped."""
    _stopped_runs.add(run_id)


def chunk_selections(shape: Sequence[int], chunks: Sequence[int]) -> list[Selection]:
    """The region of every chunk, in C order (the chunk index is the position in this list)."""
    ranges = [range(0, size, step) for size, step in zip(shape, chunks, strict=True)]
    return [
        tuple(slice(start, min(start + step, size)) for start, step, size in zip(starts, chunks, shape, strict=True))
        for starts in itertools.product(*ranges)
    ]


def random_chunk(seed: int, chunk_index: int, selection: Selection, dtype: str) -> np.ndarray:
    block_shape = tuple(region.stop - region.start for region in selection)
    return np.random.default_rng([seed, chunk_index]).random(block_shape, dtype=np.dtype(dtype))


def write_random_chunk(chunk_index: int, selection: Selection, *, run_id: str, target: Any, seed: int, dtype: str) -> int:
    """Generate chunk ``chunk_index`` and write it into the zarr array ``target``.

    Return its size in bytes, or 0 when the run was stopped and nothing was written.
    """
    if run_id in _stopped_runs:
        return 0
    block = random_chunk(seed, chunk_index, selection, dtype)
    target[selection] = block
    return block.nbytes
