"""The ``random-array`` app: the gateway's first computation, an array of uniform random numbers in [0, 1).

Chunk ``i`` of a job with seed ``s`` is ``numpy.random.default_rng([s, i]).random(...)``,
where ``i`` is the chunk's position in C order, so the same seed, shape and
chunks give a bit-identical array however the chunks are grouped into tasks,
however many workers share them and in whatever order they write.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from ..region_writes import chunks_in
from .base import App, Inputs, Output, Plan, PlanContext, PlanRefused, Selection
from .layout import AUTO_SHARDS, NO_SHARDS, shards_for, within_limits

DTYPES = ("float32", "float64")
MAX_SEED = 2**63 - 1
# The tutorial's job: what a parameter left out is.
DEFAULT_SHAPE = (1000, 1000)
DEFAULT_CHUNKS = (100, 100)
DEFAULT_DTYPE = "float32"
# A side of an array: far beyond any limit an operator sets, and small enough that sizes stay exact integers.
MAX_SIDE = 2**40
_PAIR = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": MAX_SIDE}, "minItems": 2, "maxItems": 2}
SHARDS_DESCRIPTION = (
    "Zarr 3 shards: [rows, columns] (whole multiples of chunks, each shard one object), 'auto' (about 8 MiB each) "
    "or 'none' (one object per chunk); absent: the gateway's GATEWAY_DEFAULT_SHARDS"
)


def random_chunk(seed: int, chunk_index: int, selection: Selection, dtype: str) -> np.ndarray:
    """The values of chunk ``chunk_index`` at ``selection``."""
    block_shape = tuple(region.stop - region.start for region in selection)
    return np.random.default_rng([seed, chunk_index]).random(block_shape, dtype=np.dtype(dtype))


class RandomArray(App):
    name = "random-array"
    version = "1.0.0"
    description = "An array of uniform random numbers in [0, 1), the same for the same seed, shape and chunks"
    parameters = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "seed": {
                "type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED,
                "description": "Same seed, shape and chunks: a bit-identical array; absent or null: drawn by the gateway and recorded",
            },
            "shape": {**_PAIR, "default": list(DEFAULT_SHAPE), "description": "Rows and columns"},
            "chunks": {**_PAIR, "default": list(DEFAULT_CHUNKS), "description": "Rows and columns of a chunk; absent: 100x100, or the array when smaller"},
            "dtype": {"type": "string", "enum": list(DTYPES), "default": DEFAULT_DTYPE},
            "shards": {"oneOf": [_PAIR, {"type": "string", "enum": [AUTO_SHARDS, NO_SHARDS]}, {"type": "null"}], "description": SHARDS_DESCRIPTION},
        },
    }  # fmt: skip
    drawn = frozenset({"seed"})

    def plan(self, parameters: dict[str, Any], context: PlanContext) -> Plan:
        limits = context.limits
        shape = tuple(parameters.get("shape", DEFAULT_SHAPE))
        # Without chunks, an array smaller than the default chunks is one chunk.
        chunks = tuple(parameters["chunks"]) if "chunks" in parameters else tuple(min(step, size) for step, size in zip(DEFAULT_CHUNKS, shape, strict=True))
        dtype = parameters.get("dtype", DEFAULT_DTYPE)
        if any(step > size for step, size in zip(chunks, shape, strict=True)):
            raise PlanRefused(f"chunks {list(chunks)} must be no larger than shape {list(shape)}")
        # Before its shards are worked out: a job over a size limit hears that, rather than what is wrong with its shards.
        within_limits(Output(shape, chunks, dtype), limits)
        shards = shards_for(parameters.get("shards", limits.default_shards), shape, chunks, dtype, limits.zarr_format)
        output = Output(shape, chunks, dtype, shards)
        # Without a seed one is drawn and recorded, so that every result can be made again.
        seed = parameters.get("seed")
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else int(seed)
        return Plan({"seed": seed, **output.to_json()}, output)

    def compute(self, region: Selection, parameters: dict[str, Any], output: Output, inputs: Inputs) -> np.ndarray:
        return _random_region(parameters["seed"], region, output)


def _random_region(seed: int, region: Selection, output: Output) -> np.ndarray:
    values = np.empty(tuple(part.stop - part.start for part in region), dtype=output.dtype)
    for index, selection in chunks_in(region, output.shape, output.chunks):
        within = tuple(slice(part.start - origin.start, part.stop - origin.start) for part, origin in zip(selection, region, strict=True))
        values[within] = random_chunk(seed, index, selection, output.dtype)
    return values


def expected_array(seed: int, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str = DEFAULT_DTYPE) -> np.ndarray:
    """The whole array a job of these parameters writes, made here: what tests and tools compare a result with."""
    return _random_region(seed, tuple(slice(0, size) for size in shape), Output(shape, chunks, dtype))
