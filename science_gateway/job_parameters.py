"""A job's parameters and id: what callers may ask for, checked against the limits."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GatewayError
from .random_chunks import MAX_TASK_BYTES
from .settings import LONGEST_TTL

JOB_ID_RULE = "1 to 128 characters of letters, digits, '.', '_' and '-', not starting with '.'"
# The rules as regular expressions, whole values only: the API document and the jobs page's form take them from here.
JOB_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
# Two positive integers in a query string, as shape=1000,1000.
PAIR_PATTERN = r"^[1-9][0-9]*,[1-9][0-9]*$"
DTYPES = ("float32", "float64")
PARAMETERS = ("seed", "shape", "chunks", "dtype", "shards")
MAX_SEED = 2**63 - 1
# The shards parameter's words: one object per chunk, or shards of about AUTO_SHARD_BYTES.
NO_SHARDS, AUTO_SHARDS = "none", "auto"
# One shard is one object, written whole by one task (with a task's other shards).
# About a task's size: a default job is one shard, and a large job's shards
# still spread over the workers.
AUTO_SHARD_BYTES = MAX_TASK_BYTES
# A worker holds a whole shard, and its encoded copy, while it writes it.
MAX_SHARD_BYTES = 256 * 2**20


class InvalidJobId(GatewayError, ValueError):
    """The job id is not one the service accepts; the message says what is allowed."""

    status, code = 400, "invalid_job_id"


class InvalidParameters(GatewayError, ValueError):
    """A job parameter is malformed or out of range; the message names it."""

    status, code = 400, "invalid_parameters"


class JobTooLarge(GatewayError, ValueError):
    """The job is over a size limit; the message names the limit and its setting."""

    status, code = 413, "job_too_large"


@dataclass(frozen=True)
class RandomArraySpec:
    """What to generate; the defaults are the tutorial's job."""

    seed: int
    shape: tuple[int, ...] = (1000, 1000)
    chunks: tuple[int, ...] = (100, 100)
    dtype: str = "float32"
    # Zarr 3 shards, each a whole number of chunks; None: every chunk is an object of its own.
    shards: tuple[int, ...] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def n_chunks(self) -> int:
        return math.prod(math.ceil(size / step) for size, step in zip(self.shape, self.chunks, strict=True))

    @property
    def write_unit(self) -> tuple[int, ...]:
        """What one write stores as one object: a shard, or a chunk."""
        return self.shards or self.chunks

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "shape": list(self.shape), "chunks": list(self.chunks), "dtype": self.dtype,
            "shards": list(self.shards) if self.shards else None,
        }  # fmt: skip


def validate_job_id(job_id: str) -> str:
    """Return the id unchanged, or raise :class:`InvalidJobId`."""
    if not re.fullmatch(JOB_ID_PATTERN, job_id, re.ASCII):
        shown = job_id if len(job_id) <= 40 else job_id[:40] + "..."
        raise InvalidJobId(f"invalid job id {shown!r}: a job id is {JOB_ID_RULE}")
    return job_id


def new_job_id() -> str:
    return f"job-{secrets.token_hex(8)}"


def _whole(value: Any) -> Any:
    """JSON has one number type: 100.0 is the integer 100 (as JSON Schema counts it), 100.5 is not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _integers(name: str, value: Any) -> tuple[int, ...]:
    # Query strings give "1000,1000"; JSON bodies give [1000, 1000].
    malformed = InvalidParameters(f"{name} must be two integers, as {name}=1000,1000 or [1000, 1000]")
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or len(items) != 2:
        raise malformed
    try:
        numbers = tuple(int(item) if isinstance(item, str) else _whole(item) for item in items)
    except ValueError:
        raise malformed from None
    if not all(isinstance(number, int) and not isinstance(number, bool) for number in numbers):
        raise malformed
    if any(number <= 0 for number in numbers):
        raise InvalidParameters(f"{name} must be positive, got {list(numbers)}")
    # Written as the API document says, in digits alone: int() would also take " 10", "+10" and "0010".
    if isinstance(value, str) and not re.fullmatch(PAIR_PATTERN, value, re.ASCII):
        raise malformed
    return numbers


def _seed(value: Any) -> int:
    if value is None:
        return secrets.randbelow(MAX_SEED + 1)
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise InvalidParameters(f"seed must be an integer from 0 to {MAX_SEED}, got {value!r}") from None
    value = _whole(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise InvalidParameters(f"seed must be an integer from 0 to {MAX_SEED}, got {value!r}")
    return value


def parse_ttl(value: Any, default: int | None, maximum: int | None) -> int | None:
    """A job's ``ttl`` parameter: seconds its result is kept once finished; the gateway's default when absent."""
    if value is None:
        return default
    try:
        ttl = int(value) if isinstance(value, str) else _whole(value)
    except ValueError:
        ttl = None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise InvalidParameters(f"ttl must be a whole number of seconds above 0, got {value!r}")
    if maximum is not None and ttl > maximum:
        raise InvalidParameters(f"ttl {ttl} is over the limit of {maximum} s (GATEWAY_MAX_RESULT_TTL)")
    if ttl > LONGEST_TTL:
        raise InvalidParameters(f"ttl {ttl} is over {LONGEST_TTL} s (100 years); leave ttl out to keep the result until it is deleted")
    return ttl


def parse_spec(
    parameters: Mapping[str, Any], max_elements: float, max_chunks: float, default_shards: str = NO_SHARDS, zarr_format: int = 3
) -> RandomArraySpec:
    """The job's parameters, from query strings or JSON values, checked against the limits.

    Without a seed one is drawn and recorded, so that every result can be made again.
    Without chunks, an array smaller than the default chunks is one chunk.
    Without shards, ``default_shards`` decides ("none", "auto" or rows,columns).
    """
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise InvalidParameters(f"unknown parameter {unknown[0]!r}; the parameters are {', '.join(PARAMETERS)}")
    defaults = RandomArraySpec(seed=0)
    shape = _integers("shape", parameters["shape"]) if "shape" in parameters else defaults.shape
    if "chunks" in parameters:
        chunks = _integers("chunks", parameters["chunks"])
    else:
        chunks = tuple(min(step, size) for step, size in zip(defaults.chunks, shape, strict=True))
    dtype = parameters.get("dtype", defaults.dtype)
    if dtype not in DTYPES:
        raise InvalidParameters(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if any(step > size for step, size in zip(chunks, shape, strict=True)):
        raise InvalidParameters(f"chunks {list(chunks)} must be no larger than shape {list(shape)}")
    shards = _shards(parameters.get("shards", default_shards), shape, chunks, np.dtype(dtype).itemsize, zarr_format)
    spec = RandomArraySpec(seed=_seed(parameters.get("seed")), shape=shape, chunks=chunks, dtype=dtype, shards=shards)
    elements = math.prod(shape)
    if elements > max_elements:
        raise JobTooLarge(f"shape {list(shape)} has {elements} elements, over the limit of {max_elements} (GATEWAY_MAX_ELEMENTS)")
    if spec.n_chunks > max_chunks:
        raise JobTooLarge(f"{spec.n_chunks} chunks is over the limit of {max_chunks} (GATEWAY_MAX_CHUNKS); use larger chunks")
    return spec


def _shards(value: Any, shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int, zarr_format: int) -> tuple[int, ...] | None:
    if value is None or value == NO_SHARDS:
        return None
    if value == AUTO_SHARDS:
        # Zarr 2 cannot shard: there "auto" is one object per chunk. A shard of one chunk would only add an index.
        shards = auto_shards(shape, chunks, itemsize) if zarr_format == 3 else chunks
        return shards if shards != chunks else None
    if isinstance(value, str) and "," not in value:
        raise InvalidParameters(f"shards must be {NO_SHARDS!r}, {AUTO_SHARDS!r} or two integers, as shards=1000,1000")
    shards = _integers("shards", value)
    if zarr_format != 3:
        raise InvalidParameters("shards need Zarr 3, and this gateway writes Zarr 2 (GATEWAY_ZARR_FORMAT); leave shards out")
    covering = tuple(math.ceil(size / step) * step for size, step in zip(shape, chunks, strict=True))
    if any(shard % step or shard > whole for shard, step, whole in zip(shards, chunks, covering, strict=True)):
        raise InvalidParameters(
            f"shards {list(shards)} must be whole multiples of chunks {list(chunks)}, no larger than the array in chunks {list(covering)}"
        )
    if math.prod(shards) * itemsize > MAX_SHARD_BYTES:
        raise InvalidParameters(f"a shard of {list(shards)} is over {MAX_SHARD_BYTES // 2**20} MiB; use smaller shards")
    return shards


def differences(existing: Mapping[str, Any], requested: Mapping[str, Any], left_to_gateway: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each requested parameter whose value is not the existing job's, with both values.

    A parameter the caller left out for the gateway to choose (``left_to_gateway``:
    a seed drawn at random, the default ttl) matches whatever the existing job has.
    """
    return {
        name: {"existing": existing.get(name), "requested": value}
        for name, value in requested.items()
        if name not in left_to_gateway and existing.get(name) != value
    }


def auto_shards(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """The largest block of whole chunks, grown along the last axis first, of at most ``AUTO_SHARD_BYTES``.

    At least one chunk, and never more chunks than the array has along an axis.
    """
    budget = max(1, AUTO_SHARD_BYTES // (math.prod(chunks) * itemsize))
    counts = []
    for size, step in reversed(list(zip(shape, chunks, strict=True))):
        count = max(1, min(math.ceil(size / step), budget))
        counts.append(count)
        budget //= count
    return tuple(count * step for count, step in zip(reversed(counts), chunks, strict=True))
