"""The job path's store client (obstore): opened from the environment, never carried in a task, errors on one line."""

import pickle
from pathlib import Path

import obstore
import pytest

from devtools.processes import free_port
from helpers import random_job
from science_gateway import results_objects
from science_gateway.results_store import ResultsStore, describe_storage_failure

SECRET = "unit-secret-key-0123456789"


@pytest.fixture()
def s3_environment(monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials and an endpoint where nothing listens; returns the endpoint."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unit-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return endpoint


def test_a_jobs_target_carries_the_results_url_and_never_a_credential(s3_environment: str) -> None:
    store = ResultsStore("s3://results/prefix")
    result = store.pending_result("job", "job", random_job(seed=1).output, zarr_format=3)
    results_objects.open_results(store.url)  # the gateway's own client exists, with the secret in its process
    sent = pickle.dumps(result.target)
    assert b"s3://results/prefix" in sent
    assert SECRET.encode() not in sent and b"unit-access-key" not in sent


def test_the_store_is_opened_anew_when_the_environment_changes(s3_environment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = results_objects.open_results("s3://results")
    assert results_objects.open_results("s3://results") is first
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert results_objects.open_results("s3://results") is not first


def test_a_failed_request_is_described_on_one_line_with_its_root_cause(s3_environment: str) -> None:
    with pytest.raises(Exception) as failed:
        obstore.put(results_objects.open_results("s3://results"), "key", b"value")
    described = results_objects.describe(failed.value)
    assert "\n" not in described and "Debug source" not in described
    assert described.startswith("GenericError: ") and "ConnectionRefused" in described, described
    assert SECRET not in described


def test_a_results_directory_that_does_not_exist_is_never_made(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(Exception, match="missing"):
        results_objects.open_results(missing.as_uri())
    assert not missing.exists()


def test_a_storage_error_that_quotes_the_secret_key_shows_it_masked(s3_environment: str) -> None:
    message = describe_storage_failure("writing chunks of job 'x' failed", OSError(f"SignatureDoesNotMatch for secret {SECRET}"))
    assert SECRET not in message
    assert message == "results store error: writing chunks of job 'x' failed: OSError: SignatureDoesNotMatch for secret ***"
