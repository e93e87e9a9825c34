import pytest

from science_gateway.job_parameters import InvalidJobId, validate_job_id


@pytest.mark.parametrize("job_id", ["run-7", "a", "A_b.c-9", "x" * 128, "0", "_hidden", "-dash", "v1..2"])
def test_accepted_ids(job_id: str) -> None:
    assert validate_job_id(job_id) == job_id


@pytest.mark.parametrize(
    "job_id",
    ["", ".", "..", ".zarray", "../escape", "a/b", "a\\b", "with space", "caf\u00e9", "tab\t", "x" * 129, "a%2Fb", "nul\x00"],
)
def test_rejected_ids_say_what_is_allowed(job_id: str) -> None:
    with pytest.raises(InvalidJobId, match="1 to 128 characters of letters, digits"):
        validate_job_id(job_id)
