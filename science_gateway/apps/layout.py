"""Rules of an output's layout that every app's plan may use: its shards, and the gateway's size limits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..region_writes import MAX_TASK_BYTES
from ..settings import MAX_SHARD_BYTES
from .base import Limits, Output, OutputTooLarge, PlanRefused

# The shards parameter's words: one object per chunk, or shards of about AUTO_SHARD_BYTES.
NO_SHARDS, AUTO_SHARDS = "none", "auto"
# One shard is one object, written whole by one task (with a task's other shards).
# About a task's size: a default job is one shard, and a large job's shards
# still spread over the workers.
AUTO_SHARD_BYTES = MAX_TASK_BYTES


def shards_for(value: Any, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, zarr_format: int) -> tuple[int, ...] | None:
    """The shards ``value`` asks for: None or "none" (one object per chunk), "auto", or rows and columns (a list, or "rows,columns")."""
    if value is None or value == NO_SHARDS:
        return None
    if value == AUTO_SHARDS:
        # Zarr 2 cannot shard: there "auto" is one object per chunk. A shard of one chunk would only add an index.
        shards = auto_shards(shape, chunks, np.dtype(dtype).itemsize) if zarr_format == 3 else chunks
        return shards if shards != chunks else None
    shards = tuple(int(part) for part in value.split(",")) if isinstance(value, str) else tuple(value)
    if zarr_format != 3:
        raise PlanRefused("shards need Zarr 3, and this gateway writes Zarr 2 (GATEWAY_ZARR_FORMAT); leave shards out")
    covering = tuple(math.ceil(size / step) * step for size, step in zip(shape, chunks, strict=True))
    if any(shard % step or shard > whole for shard, step, whole in zip(shards, chunks, covering, strict=True)):
        raise PlanRefused(
            f"shards {list(shards)} must be whole multiples of chunks {list(chunks)}, no larger than the array in chunks {list(covering)}"
        )
    return shards


def auto_shards(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """The largest block of whole chunks, grown along the last axis first, of at most ``AUTO_SHARD_BYTES``.

    At least one chunk, and never more chunks than the array has along an axis.
    """
    budget = max(1, AUTO_SHARD_BYTES // (math.prod(chunks) * itemsize))
    counts = []
    for size, step in reversed(list(zip(shape, chunks, strict=True))):
        count = max(1, min(-(-size // step), budget))
        counts.append(count)
        budget //= count
    return tuple(count * step for count, step in zip(reversed(counts), chunks, strict=True))


def within_limits(output: Output, limits: Limits) -> Output:
    """``output`` unchanged, or :class:`OutputTooLarge` naming the limit it is over and its setting.

    The gateway checks every app's planned output with it; an app may call it
    sooner, to refuse before it works anything else out.
    """
    elements = math.prod(output.shape)
    if elements > limits.max_elements:
        raise OutputTooLarge(f"shape {list(output.shape)} has {elements} elements, over the limit of {limits.max_elements} (GATEWAY_MAX_ELEMENTS)")
    if output.n_chunks > limits.max_chunks:
        raise OutputTooLarge(f"{output.n_chunks} chunks is over the limit of {limits.max_chunks} (GATEWAY_MAX_CHUNKS); use larger chunks")
    itemsize = np.dtype(output.dtype).itemsize
    chunk_bytes = math.prod(output.chunks) * itemsize
    if chunk_bytes > limits.max_chunk_bytes:
        raise OutputTooLarge(
            f"a chunk of {list(output.chunks)} {output.dtype} is {_size(chunk_bytes)}, over the limit of {_size(limits.max_chunk_bytes)} "
            "(GATEWAY_MAX_CHUNK_BYTES); use smaller chunks"
        )
    shard_bytes = math.prod(output.shards) * itemsize if output.shards else 0
    if shard_bytes > MAX_SHARD_BYTES:
        raise OutputTooLarge(
            f"a shard of {list(output.shards or ())} {output.dtype} is {_size(shard_bytes)}, over the limit of {_size(MAX_SHARD_BYTES)} a shard, "
            "the most a worker holds of one object; use smaller shards"
        )
    return output


def _size(nbytes: float) -> str:
    return f"{nbytes:.0f} bytes ({nbytes / 2**20:.1f} MiB)"
