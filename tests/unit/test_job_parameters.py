"""The random-array app's parameters through the gateway's checks: its schema, then its plan, from query strings and JSON alike."""

import math
from typing import Any

import numpy as np
import pytest
from openapi_spec_validator import validate

from science_gateway.apps.base import Limits, OutputTooLarge, PlanRefused
from science_gateway.apps.layout import AUTO_SHARD_BYTES, auto_shards
from science_gateway.apps.random_array import random_chunk
from science_gateway.apps.registry import ParametersRefused, load_apps
from science_gateway.job_parameters import InvalidParameters, parse_ttl
from science_gateway.job_work import JobWork, plan_work
from science_gateway.openapi import openapi_document
from science_gateway.region_writes import chunk_selections
from science_gateway.settings import LONGEST_TTL, Settings

APPS = load_apps()
UNKNOWN = "unknown parameter; the parameters are seed, shape, chunks, dtype, shards"
RANDOM = APPS.get("random-array")


def planned(
    parameters: dict[str, Any], *, query: bool = False, default_shards: str = "none", zarr_format: int = 3, max_elements: int = 10**8,
    max_chunk_bytes: int = Settings().max_chunk_bytes,
) -> JobWork:
    """As the gateway plans a random-array job: from the query string's text when ``query``, checked against the schema, then planned."""
    if query:
        parameters = APPS.from_query(RANDOM, parameters)
    checked = APPS.check(RANDOM, parameters)
    return plan_work(RANDOM, checked, Limits(max_elements, 10_000, max_chunk_bytes, default_shards, zarr_format), lambda job_id: None)


def test_defaults_are_the_tutorials_job_with_a_recorded_seed() -> None:
    work = planned({})
    assert (work.output.shape, work.output.chunks, work.output.dtype) == ((1000, 1000), (100, 100), "float32")
    assert work.output.n_chunks == 100
    assert 0 <= work.parameters["seed"] < 2**63
    assert planned({}).parameters["seed"] != work.parameters["seed"]
    assert work.parameters == {"seed": work.parameters["seed"], "shape": [1000, 1000], "chunks": [100, 100], "dtype": "float32", "shards": None}


def test_query_strings_and_json_values_mean_the_same() -> None:
    from_query = planned({"seed": "7", "shape": "300,200", "chunks": "100,50", "dtype": "float64"}, query=True)
    from_json = planned({"seed": 7, "shape": [300, 200], "chunks": [100, 50], "dtype": "float64"})
    assert from_query == from_json
    assert from_query.output.n_chunks == 12


@pytest.mark.parametrize(
    ("parameters", "pointer", "reason"),
    [
        ({"shape": "1000"}, "/shape", "'1000' is not of type 'array'"),
        ({"shape": "a,10"}, "/shape/0", "'a' is not of type 'integer'"),
        # The API document's integers in a query string: digits alone, no sign, space or leading zero.
        ({"shape": "+300,200"}, "/shape/0", "'+300' is not of type 'integer'"),
        ({"shape": "300, 200"}, "/shape/1", "' 200' is not of type 'integer'"),
        ({"chunks": "0100,50"}, "/chunks/0", "'0100' is not of type 'integer'"),
        ({"shape": "0,10"}, "/shape/0", "0 is less than the minimum of 1"),
        ({"chunks": "-1,10"}, "/chunks/0", "-1 is less than the minimum of 1"),
        ({"dtype": "int8"}, "/dtype", "'int8' is not one of ['float32', 'float64']"),
        ({"seed": "x"}, "/seed", "'x' is not of type 'integer', 'null'"),
        ({"shards": "all"}, "/shards", "'all' is not valid under any of the given schemas"),
        ({"colour": "blue"}, "/colour", "unknown parameter; the parameters are seed, shape, chunks, dtype, shards"),
    ],
)
def test_a_query_strings_bad_parameter_is_named_by_its_pointer(parameters: dict, pointer: str, reason: str) -> None:
    with pytest.raises(ParametersRefused) as refused:
        planned(parameters, query=True)
    assert refused.value.details() == {"details": [{"pointer": pointer, "reason": reason}]}
    assert str(refused.value) == f"invalid parameters for app 'random-array': {pointer}: {reason}"


@pytest.mark.parametrize(
    ("parameters", "failures"),
    [
        ({"shape": [1000, 1000.5]}, [("/shape/1", "1000.5 is not of type 'integer'")]),
        ({"shape": [True, 3]}, [("/shape/0", "True is not of type 'integer'")]),
        ({"seed": -1}, [("/seed", "-1 is less than the minimum of 0")]),
        ({"seed": 2**63}, [("/seed", f"{2**63} is greater than the maximum of {2**63 - 1}")]),
        ({"shards": 5}, [("/shards", "5 is not valid under any of the given schemas")]),
        # Every failing field at once, the unknown ones by name.
        (
            {"seed": -1, "dtype": "int8", "a": 1, "b": 2},
            [("/a", UNKNOWN), ("/b", UNKNOWN), ("/dtype", "'int8' is not one of ['float32', 'float64']"), ("/seed", "-1 is less than the minimum of 0")],
        ),
    ],
)
def test_a_json_bodys_bad_parameters_are_each_named_by_pointer(parameters: dict, failures: list) -> None:
    with pytest.raises(ParametersRefused) as refused:
        planned(parameters)
    assert refused.value.details() == {"details": [{"pointer": pointer, "reason": reason} for pointer, reason in failures]}


def test_what_the_schema_cannot_say_the_plan_refuses_naming_it() -> None:
    with pytest.raises(PlanRefused, match=r"chunks \[2000, 10\] must be no larger than shape \[1000, 1000\]"):
        planned({"chunks": "2000,10"}, query=True)


def test_limits_name_their_setting() -> None:
    with pytest.raises(OutputTooLarge, match="GATEWAY_MAX_ELEMENTS"):
        planned({"shape": "20000,20000", "chunks": "1000,1000"}, query=True)
    with pytest.raises(OutputTooLarge, match="GATEWAY_MAX_CHUNKS"):
        planned({"shape": "10000,10000", "chunks": "10,10"}, query=True)
    with pytest.raises(OutputTooLarge, match="GATEWAY_MAX_CHUNK_BYTES"):
        planned({"shape": "10000,10000", "chunks": "10000,10000", "dtype": "float64"}, query=True)


def test_a_chunk_may_be_as_large_as_gateway_max_chunk_bytes_and_no_larger() -> None:
    # 4096 x 4096 float32 is 64 MiB, the default limit.
    assert planned({"shape": [4096, 4097], "chunks": [4096, 4096]}).output.chunks == (4096, 4096)
    over = r"a chunk of \[4096, 4097\] float32 is 67125248 bytes \(64.0 MiB\), over the limit of 67108864 bytes \(64.0 MiB\) \(GATEWAY_MAX_CHUNK_BYTES\)"
    with pytest.raises(OutputTooLarge, match=over):
        planned({"shape": [4096, 4097], "chunks": [4096, 4097]})
    assert planned({"shape": [4096, 4097], "chunks": [4096, 4097]}, max_chunk_bytes=2**27).output.chunks == (4096, 4097)


def test_a_huge_shape_is_a_size_refusal_before_any_shard_is_worked_out() -> None:
    with pytest.raises(OutputTooLarge, match="GATEWAY_MAX_ELEMENTS"):
        planned({"shape": [2**40, 2**40], "chunks": [1, 1], "shards": "auto"})


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
    validate(openapi_document(APPS))


def test_an_array_smaller_than_the_default_chunks_is_one_chunk_and_json_whole_numbers_count() -> None:
    work = planned({"shape": [50, 2000], "seed": 7.0})
    assert (work.output.chunks, work.parameters["seed"]) == ((50, 100), 7)
    assert planned({"shape": [100.0, 100.0]}).output.shape == (100, 100)
    assert planned({"shape": [100.0, 100.0]}).parameters["shape"] == [100, 100], "recorded as integers"


def test_shards_default_to_the_gateways_setting_and_auto_makes_the_default_job_one_shard() -> None:
    assert planned({}).output.shards is None
    assert planned({}, default_shards="auto").output.shards == (1000, 1000)
    assert planned({"shards": "none"}, default_shards="auto").output.shards is None
    assert planned({"shards": None}, default_shards="auto").output.shards is None
    assert planned({"seed": "1", "shards": "500,1000"}, query=True) == planned({"seed": 1, "shards": [500, 1000]})
    assert planned({"shards": "auto"}, zarr_format=2).output.shards is None, "Zarr 2 cannot shard"


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
    ],
)
def test_bad_shards_are_named(parameters: dict, message: str) -> None:
    with pytest.raises(PlanRefused, match=message):
        planned(parameters, query=True)


def test_a_shard_over_256_mib_is_too_large_as_the_other_size_limits_are() -> None:
    over = r"a shard of \[20000, 20000\] float32 is 1600000000 bytes \(1525.9 MiB\), over the limit of 268435456 bytes \(256.0 MiB\) a shard"
    with pytest.raises(OutputTooLarge, match=over):
        planned({"shape": "20000,20000", "chunks": "4000,4000", "shards": "20000,20000"}, query=True, max_elements=10**9)
    assert planned({"shape": "20000,20000", "chunks": "4000,4000", "shards": "8000,8000"}, query=True, max_elements=10**9).output.shards == (8000, 8000)


def test_explicit_shards_on_a_zarr_2_gateway_are_refused_naming_the_setting() -> None:
    with pytest.raises(PlanRefused, match="GATEWAY_ZARR_FORMAT"):
        planned({"shards": "1000,1000"}, query=True, zarr_format=2)


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
