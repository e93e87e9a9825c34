import math

import numpy as np
import pytest
from openapi_spec_validator import validate

from science_gateway.job_parameters import AUTO_SHARD_BYTES, InvalidParameters, JobTooLarge, auto_shards, parse_spec, parse_ttl
from science_gateway.openapi import openapi_document
from science_gateway.random_chunks import chunk_selections, random_chunk
from science_gateway.settings import LONGEST_TTL

LIMITS = {"max_elements": 10**8, "max_chunks": 10_000}


def test_defaults_are_the_tutorials_job_with_a_recorded_seed() -> None:
    spec = parse_spec({}, **LIMITS)
    assert (spec.shape, spec.chunks, spec.dtype) == ((1000, 1000), (100, 100), "float32")
    assert spec.n_chunks == 100
    assert 0 <= spec.seed < 2**63
    assert parse_spec({}, **LIMITS).seed != spec.seed


def test_query_strings_and_json_values_mean_the_same() -> None:
    from_query = parse_spec({"seed": "7", "shape": "300,200", "chunks": "100,50", "dtype": "float64"}, **LIMITS)
    from_json = parse_spec({"seed": 7, "shape": [300, 200], "chunks": [100, 50], "dtype": "float64"}, **LIMITS)
    assert from_query == from_json
    assert from_query.n_chunks == 12


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"shape": "1000"}, "shape must be two integers"),
        ({"shape": "a,b"}, "shape must be two integers"),
        ({"shape": [1000, 1000.5]}, "shape must be two integers"),
        ({"shape": [True, 3]}, "shape must be two integers"),
        ({"shape": "0,10"}, "shape must be positive"),
        # The API document's pattern for a pair in a query string: digits alone, no sign, space or leading zero.
        ({"shape": "+300,200"}, "shape must be two integers"),
        ({"shape": "300, 200"}, "shape must be two integers"),
        ({"chunks": "0100,50"}, "chunks must be two integers"),
        ({"chunks": "-1,10"}, "chunks must be positive"),
        ({"chunks": "2000,10"}, "must be no larger than shape"),
        ({"dtype": "int8"}, "dtype must be one of float32, float64"),
        ({"seed": "x"}, "seed must be an integer"),
        ({"seed": -1}, "seed must be an integer"),
        ({"seed": 2**63}, "seed must be an integer"),
        ({"colour": "blue"}, "unknown parameter 'colour'"),
    ],
)
def test_bad_parameters_are_named(parameters: dict, message: str) -> None:
    with pytest.raises(InvalidParameters, match=message):
        parse_spec(parameters, **LIMITS)


def test_limits_name_their_setting() -> None:
    with pytest.raises(JobTooLarge, match="GATEWAY_MAX_ELEMENTS"):
        parse_spec({"shape": "20000,20000", "chunks": "1000,1000"}, **LIMITS)
    with pytest.raises(JobTooLarge, match="GATEWAY_MAX_CHUNKS"):
        parse_spec({"shape": "10000,10000", "chunks": "10,10"}, **LIMITS)


def test_chunk_selections_tile_the_array_exactly() -> None:
    selections = chunk_selections((250, 120), (100, 50))
    covered = np.zeros((250, 120), dtype=int)
    for selection in selections:
        covered[selection] += 1
    assert len(selections) == 9 and (covered == 1).all()


def test_a_chunk_depends_only_on_seed_and_index() -> None:
    selection = (slice(0, 100), slice(100, 200))
    first = random_chunk(7, 3, selection, "float32")
    assert first.shape == (100, 100) and first.dtype == np.float32
    assert np.array_equal(first, random_chunk(7, 3, selection, "float32"))
    assert not np.array_equal(first, random_chunk(8, 3, selection, "float32"))
    assert not np.array_equal(first, random_chunk(7, 4, selection, "float32"))


def test_the_openapi_document_is_valid() -> None:
    validate(openapi_document())


def test_an_array_smaller_than_the_default_chunks_is_one_chunk_and_json_whole_numbers_count() -> None:
    spec = parse_spec({"shape": [50, 2000], "seed": 7.0}, 10**8, 10_000)
    assert (spec.chunks, spec.seed) == ((50, 100), 7)
    assert parse_spec({"shape": [100.0, 100.0]}, 10**8, 10_000).shape == (100, 100)


def test_shards_default_to_the_gateways_setting_and_auto_makes_the_default_job_one_shard() -> None:
    assert parse_spec({}, **LIMITS).shards is None, "parse_spec's own default is one object per chunk"
    assert parse_spec({}, **LIMITS, default_shards="auto").shards == (1000, 1000)
    assert parse_spec({"shards": "none"}, **LIMITS, default_shards="auto").shards is None
    assert parse_spec({"shards": None}, **LIMITS, default_shards="auto").shards is None
    assert parse_spec({"seed": 1, "shards": "500,1000"}, **LIMITS) == parse_spec({"seed": 1, "shards": [500, 1000]}, **LIMITS)
    assert parse_spec({"shards": "auto"}, **LIMITS, zarr_format=2).shards is None, "Zarr 2 cannot shard"


@pytest.mark.parametrize(
    ("shape", "chunks", "itemsize", "shards"),
    [
        ((1000, 1000), (100, 100), 4, (1000, 1000)),
        ((1000, 1000), (100, 100), 8, (1000, 1000)),
        ((10000, 10000), (100, 100), 4, (200, 10000)),
        ((10000, 10000), (1000, 1000), 4, (1000, 2000)),
        ((10000, 10000), (3000, 3000), 8, (3000, 3000)),
        ((950, 10), (100, 10), 4, (1000, 10)),
    ],
)
def test_auto_shards_are_whole_chunks_of_at_most_a_tasks_bytes(shape, chunks, itemsize, shards) -> None:
    found = auto_shards(shape, chunks, itemsize)
    assert found == shards
    assert all(shard % step == 0 for shard, step in zip(found, chunks, strict=True))
    assert math.prod(found) * itemsize <= max(AUTO_SHARD_BYTES, math.prod(chunks) * itemsize)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"shards": "150,100"}, "whole multiples of chunks"),
        ({"shards": "1100,1000"}, "no larger than the array in chunks"),
        ({"shards": "all"}, "shards must be 'none', 'auto' or two integers"),
        ({"shards": 5}, "shards must be two integers"),
        ({"shape": "20000,20000", "chunks": "10000,10000", "shards": "20000,20000"}, "over 256 MiB"),
    ],
)
def test_bad_shards_are_named(parameters: dict, message: str) -> None:
    with pytest.raises(InvalidParameters, match=message):
        parse_spec(parameters, **LIMITS)


def test_explicit_shards_on_a_zarr_2_gateway_are_refused_naming_the_setting() -> None:
    with pytest.raises(InvalidParameters, match="GATEWAY_ZARR_FORMAT"):
        parse_spec({"shards": "1000,1000"}, **LIMITS, zarr_format=2)


@pytest.mark.parametrize(("value", "expected"), [(None, 60), ("30", 30), (3600, 3600), (41.0, 41)])
def test_a_jobs_ttl_or_the_default(value, expected) -> None:
    assert parse_ttl(value, default=60, maximum=3600) == expected


@pytest.mark.parametrize(
    ("value", "message"), [("0", "above 0"), ("soon", "whole number"), (1.5, "whole number"), (True, "whole number"), (3601, "GATEWAY_MAX_RESULT_TTL")]
)
def test_a_bad_ttl_is_named(value, message) -> None:
    with pytest.raises(InvalidParameters, match=message):
        parse_ttl(value, default=60, maximum=3600)


@pytest.mark.parametrize("value", ["355687428096000", 10**30, LONGEST_TTL + 1])
def test_without_a_maximum_a_ttl_is_still_a_date_away(value) -> None:
    """A ttl too large for a date once stopped a job runner: it is refused up front, even with no GATEWAY_MAX_RESULT_TTL."""
    with pytest.raises(InvalidParameters, match="100 years"):
        parse_ttl(value, default=None, maximum=None)
    assert parse_ttl(LONGEST_TTL, default=None, maximum=None) == LONGEST_TTL
