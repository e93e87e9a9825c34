"""The app contract: what a computation offered by the gateway declares and does.

An app is a class with a ``name``, a ``version``, a one-line ``description``
and its ``parameters`` as a JSON Schema (draft 2020-12), and two methods:

- :meth:`App.plan`, in the gateway, turns checked parameters into a
  :class:`Plan`: the parameters as recorded (defaults filled in), the one
  array the job writes (:class:`Output`) and the finished results it reads
  (:class:`Source`);
- :meth:`App.compute`, on a Dask worker, returns the values of one region of
  that array, reading its sources (:class:`Inputs`) from object storage itself.

Everything around a run is the gateway's and applies to every app alike:
validation against the schema (before ``plan`` is called), ids, records,
queue, limits, quotas, expiry, cancel, delete, writing the chunks, progress,
previews and metrics. An app raises :class:`PlanRefused` (400) for what its
schema cannot say; any other error of ``compute`` fails the job with its message.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from ..errors import GatewayError
from ..job_parameters import InvalidParameters

# A region of the output array: one slice per axis, each from and to whole blocks of the array's write units.
Selection = tuple[slice, ...]


class PlanRefused(InvalidParameters):
    """Parameters the schema allows but the app cannot run (400 ``invalid_parameters``); the message names the parameter and why."""


class OutputTooLarge(GatewayError, ValueError):
    """The planned output is over one of the gateway's size limits; the message names the limit and its setting."""

    status, code = 413, "job_too_large"


@dataclass(frozen=True)
class Output:
    """The array a job writes: the ``data`` array of its result's Zarr group."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    # Zarr 3 shards, each a whole number of chunks and one object; None: every chunk is an object of its own.
    shards: tuple[int, ...] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def n_chunks(self) -> int:
        # Whole numbers throughout: an app's schema may allow sides too large for a float.
        return math.prod(-(-size // step) for size, step in zip(self.shape, self.chunks, strict=True))

    @property
    def write_unit(self) -> tuple[int, ...]:
        """What one write stores as one object: a shard, or a chunk."""
        return self.shards or self.chunks

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "chunks": list(self.chunks), "dtype": self.dtype, "shards": list(self.shards) if self.shards else None}


@dataclass(frozen=True)
class Source:
    """A done result of the caller's that a job reads: its id, and its array as stored."""

    job_id: str
    array: Output
    # When the run that made it finished: a source made again is another source.
    finished_at: str


@dataclass(frozen=True)
class Limits:
    """The gateway's settings that a plan must keep to."""

    max_elements: float
    max_chunks: float
    max_chunk_bytes: float
    # "none", "auto" or "<rows>,<columns>": the shards of an output whose parameters do not say.
    default_shards: str
    zarr_format: int


class PlanContext(Protocol):
    """What the gateway offers :meth:`App.plan`."""

    limits: Limits

    def source(self, parameter: str, job_id: str) -> Source:
        """The caller's done job ``job_id``, named by ``parameter``; 404 or 409 naming it otherwise."""
        ...


@dataclass(frozen=True)
class Plan:
    """What a job of these parameters writes and reads."""

    # The parameters as recorded: every default filled in, so that the same plan is made from them again.
    parameters: dict[str, Any]
    output: Output
    # The parameter naming each source, and the source.
    sources: Mapping[str, Source] = field(default_factory=dict)


class Inputs(Protocol):
    """A job's sources on a worker, by the parameter naming each: zarr arrays, read-only, read with the worker's credentials."""

    def __getitem__(self, parameter: str) -> Any: ...


class App(ABC):
    """A computation the gateway offers; subclasses set the class attributes and the two methods.

    An app holds no state: the gateway makes one of each app at start-up and
    each worker its own, with no arguments.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    # JSON Schema (draft 2020-12) of the parameters object, checked at start-up.
    parameters: ClassVar[dict[str, Any]]
    # Parameters the app chooses at random when they are left out (a seed): a repeat
    # of a job's id that leaves them out is that job whatever it drew.
    drawn: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def plan(self, parameters: dict[str, Any], context: PlanContext) -> Plan:
        """The plan of a job of ``parameters``, which the schema has accepted."""

    @abstractmethod
    def compute(self, region: Selection, parameters: dict[str, Any], output: Output, inputs: Inputs) -> np.ndarray:
        """On a worker: the values of ``region`` of the output, an array of its shape, of the output's dtype or one numpy casts to it safely.

        A region is whole objects of the output (chunks, or shards): an app that
        reads a source lays out its output so that these are whole objects of the source.
        """
