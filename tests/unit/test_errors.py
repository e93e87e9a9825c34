"""One error vocabulary: each failure the service knows answers with its own status and code, and so do its subclasses."""

from pathlib import Path

import pytest

import gateway
from devtools.processes import free_port
from science_gateway.errors import DEPENDENCY_RETRY_AFTER_SECONDS, GatewayError, status_of
from science_gateway.jobs import JobNotFound
from science_gateway.results_store import StorageError
from science_gateway.settings import load_settings


def known_failures() -> list[type[GatewayError]]:
    found, kinds = [], [GatewayError]
    while kinds:
        found.append(kind := kinds.pop())
        kinds += kind.__subclasses__()
    return found


def test_each_known_failure_has_a_code_of_its_own_and_an_error_status() -> None:
    codes = [kind.code for kind in known_failures() if "code" in vars(kind)]
    assert len(codes) == len(set(codes)), sorted(codes)
    assert {"job_not_found", "storage_error", "cluster_not_ready", "not_authenticated", "gateway_stopping"} <= set(codes)
    assert all(400 <= kind.status < 600 for kind in known_failures())


@pytest.mark.parametrize(
    ("code", "status"),
    [("storage_error", 502), ("job_timeout", 504), ("cluster_not_ready", 503), ("job_failed", 500), ("interrupted", 503),
     ("job_cancelled", 409), ("a code of a later version", 500)],
)  # fmt: skip
def test_a_job_that_failed_while_its_caller_waited_answers_with_the_status_of_its_code(code: str, status: int) -> None:
    # storage_error: 502, where a request the store fails now is 503: the job's failure is its recorded outcome, not an outage of now.
    assert status_of(code) == status


def test_a_subclass_of_a_known_failure_answers_as_that_failure_and_storage_errors_are_counted_and_named(tmp_path: Path) -> None:
    class NoSuchRegion(JobNotFound):
        """A more particular kind of not found."""

    def not_found() -> None:
        raise NoSuchRegion("no region 7 in job 'x'")

    def store_failed() -> None:
        raise StorageError("results store error: the test's store failed")

    # The results store is a local directory that exists, so readiness counts no storage error of its own.
    app = gateway.create_app(load_settings({"DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}", "GATEWAY_RESULTS_URL": str(tmp_path)}))
    metrics = gateway.services(app).metrics.registry
    try:
        app.add_url_rule("/not-found", "not_found", not_found)
        app.add_url_rule("/store-failed", "store_failed", store_failed)
        client = app.test_client()
        response = client.get("/not-found")
        counted = metrics.get_sample_value("gateway_s3_errors_total")
        failed = client.get("/store-failed")
        assert metrics.get_sample_value("gateway_s3_errors_total") == counted + 1
    finally:
        gateway.services(app).close()
    assert response.status_code == 404
    assert response.json["error"] == {"code": "job_not_found", "message": "no region 7 in job 'x'"}
    # An outage of the store, not a fault of the gateway's: 503, try again after Retry-After, the dependency named.
    assert (failed.status_code, failed.headers["Retry-After"]) == (503, str(DEPENDENCY_RETRY_AFTER_SECONDS))
    assert failed.json["error"] == {"code": "storage_error", "message": "results store error: the test's store failed", "dependency": "results_store"}
