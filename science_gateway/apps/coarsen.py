"""The ``coarsen`` app: block means of one of the caller's done results, read by the workers themselves.

``out[i, j] = mean(src[i*fr:(i+1)*fr, j*fc:(j+1)*fc])``, accumulated in float64
and stored in the source's dtype (an integer mean is truncated, as numpy casts).

The result's objects mirror the source's: a chunk (and a shard) of the result
is the block means of the fewest whole chunks (shards) of the source, one when
the factor divides them. So each task, a region of whole objects of the
result, reads whole objects of the source, each once, and a large source is
read by many tasks at once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..job_parameters import JOB_ID_PATTERN
from .base import App, Inputs, Output, Plan, PlanContext, PlanRefused, Selection


class Coarsen(App):
    name = "coarsen"
    version = "1.0.0"
    description = "Block means of one of your done results: each value the mean of a factor-sized block of the source"
    parameters = {
        "type": "object",
        "additionalProperties": False,
        "required": ["source", "factor"],
        "properties": {
            "source": {"type": "string", "pattern": JOB_ID_PATTERN, "description": "The id of one of your jobs that is done"},
            "factor": {
                "description": "Rows and columns of a block: an integer of at least 2 (both), or [rows, columns]; each a divisor of the source's side",
                "oneOf": [
                    {"type": "integer", "minimum": 2},
                    {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
                ],
            },
        },
    }  # fmt: skip

    def plan(self, parameters: dict[str, Any], context: PlanContext) -> Plan:
        source = context.source("source", parameters["source"])
        factor = _factor(parameters["factor"], len(source.array.shape))
        shape = source.array.shape
        if any(size % step for size, step in zip(shape, factor, strict=True)):
            raise PlanRefused(
                f"factor {list(factor)} does not divide the shape {list(shape)} of source {source.job_id!r}: "
                f"the result would be {[round(size / step, 2) for size, step in zip(shape, factor, strict=True)]}; choose a factor that divides each side"
            )
        out_shape = tuple(size // step for size, step in zip(shape, factor, strict=True))
        chunks = _mirrored(source.array.chunks, factor, out_shape)
        shards = None
        if source.array.shards is not None and context.limits.zarr_format == 3:
            covering = tuple(math.ceil(size / step) * step for size, step in zip(out_shape, chunks, strict=True))
            shards = _mirrored(source.array.shards, factor, covering)
        output = Output(out_shape, chunks, source.array.dtype, None if shards == chunks else shards)
        return Plan({"source": source.job_id, "factor": list(factor)}, output, {"source": source})

    def compute(self, region: Selection, parameters: dict[str, Any], output: Output, inputs: Inputs) -> np.ndarray:
        factor = parameters["factor"]
        read = inputs["source"][tuple(slice(part.start * step, part.stop * step) for part, step in zip(region, factor, strict=True))]
        rows, columns = (part.stop - part.start for part in region)
        blocks = np.asarray(read, dtype=np.float64).reshape(rows, factor[0], columns, factor[1])
        return blocks.mean(axis=(1, 3)).astype(output.dtype)


def _mirrored(blocks: tuple[int, ...], factor: tuple[int, ...], largest: tuple[int, ...]) -> tuple[int, ...]:
    """The block of the result whose source is the fewest whole ``blocks`` of the source: lcm(block, factor) / factor a side, at most ``largest``."""
    return tuple(min(math.lcm(block, step) // step, most) for block, step, most in zip(blocks, factor, largest, strict=True))


def _factor(value: Any, dimensions: int) -> tuple[int, ...]:
    return tuple(int(step) for step in value) if isinstance(value, list) else (int(value),) * dimensions
