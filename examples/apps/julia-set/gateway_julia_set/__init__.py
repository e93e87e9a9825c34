"""A Julia set as a science gateway app: for each point z0 of a grid, how many steps of z -> z**2 + c keep |z| <= 2."""

from typing import Any

import numpy as np

from science_gateway.apps import App, Inputs, Output, Plan, PlanContext, Selection

SIDE = {"type": "integer", "minimum": 1, "maximum": 100_000}


class JuliaSet(App):
    name = "julia-set"
    version = "0.1.0"
    description = "Escape times of the Julia set of z**2 + c over the square [-1.5, 1.5] x [-1.5, 1.5]"
    parameters = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "c": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2, "default": [-0.8, 0.156]},
            "size": {"type": "array", "items": SIDE, "minItems": 2, "maxItems": 2, "default": [1000, 1000]},
            "max_steps": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        },
    }

    def plan(self, parameters: dict[str, Any], context: PlanContext) -> Plan:
        # Every default filled in: the record says exactly what was computed.
        parameters = {"c": [-0.8, 0.156], "size": [1000, 1000], "max_steps": 100, **parameters}
        shape = tuple(parameters["size"])
        chunks = tuple(min(500, side) for side in shape)
        return Plan(parameters, Output(shape, chunks, "uint16"))

    def compute(self, region: Selection, parameters: dict[str, Any], output: Output, inputs: Inputs) -> np.ndarray:
        rows, columns = (np.linspace(-1.5, 1.5, side)[part] for side, part in zip(output.shape, region, strict=True))
        z = columns[np.newaxis, :] + 1j * rows[:, np.newaxis]
        c = complex(*parameters["c"])
        steps = np.zeros(z.shape, dtype="uint16")
        for _ in range(parameters["max_steps"]):
            inside = np.abs(z) <= 2
            z[inside] = z[inside] ** 2 + c
            steps += inside
        return steps
