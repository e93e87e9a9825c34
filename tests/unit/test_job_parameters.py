import numpy as np
import pytest
from openapi_spec_validator import validate

from openapi import openapi_document
from random_array_job import InvalidParameters, JobTooLarge, parse_spec
from random_chunks import chunk_selections, random_chunk

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
