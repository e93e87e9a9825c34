"""The ``coarsen`` app: block means of one of the caller's done results, read by the workers themselves.

``out[i, j] = mean(src[i*fr:(i+1)*fr, j*fc:(j+1)*fc])``, accumulated in float64
and stored in the source's dtype. Each task computes a region of the output
whose source region is a whole number of the source's objects (shards, or
chunks), so each object of the source is read by one task, once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..job_parameters import JOB_ID_PATTERN
from .base import App, Inputs, Output, Plan, PlanContext, PlanRefused, Selection
from .layout import shards_for, within_limits


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
                "description": "Rows and columns of a block: an integer (both), or [rows, columns]; each a divisor of the source's side",
                "oneOf": [
                    {"type": "integer", "minimum": 2},
                    {
                        "type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2,
                        "not": {"const": [1, 1]},
                    },
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
        # The source's chunks: each output chunk is then the mean of whole source chunks.
        chunks = tuple(min(step, size) for step, size in zip(source.array.chunks, out_shape, strict=True))
        limits = context.limits
        within_limits(Output(out_shape, chunks, source.array.dtype), limits)
        shards = shards_for(limits.default_shards, out_shape, chunks, source.array.dtype, limits.zarr_format)
        output = Output(out_shape, chunks, source.array.dtype, shards)
        return Plan({"source": source.job_id, "factor": list(factor)}, output, {"source": source})

    def task_block(self, plan: Plan) -> tuple[int, ...]:
        # Whole objects of the output whose source regions are whole objects of the source.
        source_unit = plan.sources["source"].array.write_unit
        factor = plan.parameters["factor"]
        return tuple(
            math.lcm(unit, source // math.gcd(source, step))
            for unit, source, step in zip(plan.output.write_unit, source_unit, factor, strict=True)
        )

    def compute(self, region: Selection, parameters: dict[str, Any], output: Output, inputs: Inputs) -> np.ndarray:
        factor = parameters["factor"]
        read = inputs["source"][tuple(slice(part.start * step, part.stop * step) for part, step in zip(region, factor, strict=True))]
        rows, columns = (part.stop - part.start for part in region)
        blocks = np.asarray(read, dtype=np.float64).reshape(rows, factor[0], columns, factor[1])
        return blocks.mean(axis=(1, 3)).astype(output.dtype)


def _factor(value: Any, dimensions: int) -> tuple[int, ...]:
    return tuple(int(step) for step in value) if isinstance(value, list) else (int(value),) * dimensions
