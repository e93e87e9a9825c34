"""The HTTP layer while no Dask cluster can be had: Dask Gateway configured but unreachable."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from devtools.processes import free_port
from gateway import probe_answer, services
from helpers import running_app, wait_for
from openapi_check import CheckedClient
from science_gateway.openapi import OPEN_PATHS, READINESS_PARTS
from science_gateway.readiness import Readiness


@pytest.fixture(scope="module")
def unready_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    results = tmp_path_factory.mktemp("results")
    environ = {"DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}", "GATEWAY_RESULTS_URL": str(results)}
    with running_app(environ) as app:
        yield app


@pytest.fixture
def http(unready_app: Flask) -> FlaskClient:
    return unready_app.test_client()


def test_index_answers_in_plain_text(http: FlaskClient) -> None:
    response = http.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.get_data(as_text=True) == "Gateway up and running!"


def test_healthz_never_depends_on_the_cluster(http: FlaskClient) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_readyz_serves_and_names_the_unreachable_gateway(http: FlaskClient, unready_app: Flask) -> None:
    address = services(unready_app).settings.dask_gateway_address
    # Readiness is checked in the background: the probe says so within a second of the attempt, and of the records' load.
    response = wait_for(
        lambda: "cannot reach" in (answer := http.get("/readyz")).text and answer.json["job_records"]["ready"] and answer, 30, "a failed attempt"
    )
    # The process serves (submissions are queued): ready for the Service, degraded for people.
    assert response.status_code == 200
    body = response.json
    assert (body["status"], body["failing"]) == ("degraded", ["cluster"])
    assert f"cannot reach Dask Gateway at {address}" in body["message"]
    assert "DASK_GATEWAY__ADDRESS" in body["message"]
    assert body["cluster"]["ready"] is False and body["results_store"]["ready"] is True and body["job_records"]["ready"] is True


def test_readyz_serves_until_the_graceful_stop_with_each_dependencys_state_on_both_ports(tmp_path: Path) -> None:
    """200 while the process serves, a dependency out or not; 503 gateway_stopping from the stop (SIGTERM) on and once closed."""
    environ = {"DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}", "GATEWAY_RESULTS_URL": str(tmp_path)}
    with running_app(environ) as app:
        gateway, http = services(app), CheckedClient(app.test_client())
        serving = wait_for(
            lambda: (answer := probe_answer(gateway, "/readyz"))[1]["results_store"]["ready"] and answer[1]["job_records"]["ready"] and answer,
            30, "the first check and the records read",
        )  # fmt: skip
        main_port = http.get("/readyz")
        gateway.jobs.stop_starting_jobs()
        stopping = probe_answer(gateway, "/readyz")
        main_port_stopping = http.get("/readyz")
    closed = probe_answer(gateway, "/readyz")

    status, body = serving
    assert status == 200 and list(body) == ["status", "failing", "message", *READINESS_PARTS]
    assert (body["status"], body["failing"]) == ("degraded", ["cluster"]) and body["message"].startswith("cluster: Dask cluster not ready")
    assert all(set(body[part]) >= {"ready", "reason"} for part in READINESS_PARTS)
    assert (main_port.status_code, main_port.json["status"]) == (200, "degraded")
    assert stopping[0] == 503 and main_port_stopping.status_code == 503 and main_port_stopping.json == stopping[1]
    assert stopping[1]["error"]["code"] == "gateway_stopping" and set(stopping[1]["error"]) == {"code", "message", *READINESS_PARTS}
    assert closed[0] == 503 and closed[1]["error"]["results_store"] == {"ready": False, "reason": "the gateway is shut down"}
    assert probe_answer(gateway, "/healthz") == (200, {"status": "ok"}), "liveness stays local"


def test_before_its_first_check_readiness_names_each_dependency_unchecked() -> None:
    readiness = Readiness(lambda: {}, ("cluster", "results_store"))
    assert readiness.current() == {part: {"ready": False, "reason": "not checked yet"} for part in ("cluster", "results_store")}


def test_a_job_without_a_cluster_is_a_json_503_and_writes_nothing(http: FlaskClient, unready_app: Flask) -> None:
    response = http.get("/submit_job/run-1")
    assert (response.status_code, response.headers["Retry-After"]) == (503, "10")
    assert (response.json["error"]["code"], response.json["error"]["dependency"]) == ("cluster_not_ready", "cluster")
    # Only the replica's lease, which it holds from its start.
    assert [path.name for path in Path(services(unready_app).store.url.removeprefix("file://")).iterdir()] == [".replicas"]


@pytest.mark.parametrize("path", ["/submit_job/..", "/submit_job/.hidden", "/submit_job/a/b", "/submit_job/", "/submit_job/" + "x" * 129])
def test_bad_job_ids_are_rejected_before_the_cluster_is_asked(http: FlaskClient, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_job_id"
    assert "1 to 128 characters" in response.json["error"]["message"]


@pytest.mark.parametrize(("method", "path", "status"), [("get", "/no/such/page", 404), ("post", "/submit_job/x", 405), ("delete", "/", 405)])
def test_http_errors_are_json_not_html(http: FlaskClient, method: str, path: str, status: int) -> None:
    response = getattr(http, method)(path)
    assert response.status_code == status
    assert response.is_json
    assert set(response.json["error"]) == {"code", "message"}


def test_the_api_documents_open_paths_are_routes_of_the_service(unready_app: Flask) -> None:
    assert set(OPEN_PATHS) <= {rule.rule for rule in unready_app.url_map.iter_rules()}


def test_with_jupyterhub_authentication_and_no_hub_a_token_cannot_be_checked(tmp_path: Path) -> None:
    environ = {
        "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_RESULTS_URL": str(tmp_path),
        "GATEWAY_AUTH": "jupyterhub",
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api",
    }
    with running_app(environ) as app:
        client = app.test_client()
        # Open without a token: /readyz serves, degraded (no Dask Gateway, no hub), never 401.
        assert {path: client.get(path).status_code for path in OPEN_PATHS} == {"/healthz": 200, "/readyz": 200, "/metrics": 200}
        missing = client.get("/jobs")
        unchecked = client.get("/jobs", headers={"Authorization": "Bearer some-token"})

    assert missing.status_code == 401 and missing.json["error"]["code"] == "not_authenticated"
    assert unchecked.status_code == 503 and unchecked.json["error"]["code"] == "auth_unavailable"
    assert environ["JUPYTERHUB_API_URL"] in unchecked.json["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None])
def test_a_post_without_a_json_body_type_is_refused_even_when_empty(http: FlaskClient, content_type: str | None) -> None:
    """What a form on another site can send: never a job, whatever cookie the browser adds."""
    response = http.post("/jobs", headers={"Content-Type": content_type} if content_type else {})
    assert response.status_code == 415 and response.json["error"]["code"] == "unsupported_media_type"


def test_a_body_over_the_limit_is_refused_unread(http: FlaskClient) -> None:
    response = http.post("/jobs", data=b'{"seed": 1, "pad": "' + b"x" * 20_000 + b'"}', content_type="application/json")
    assert response.status_code == 413 and response.json["error"]["code"] == "request_entity_too_large"


@pytest.fixture(scope="module")
def small_queue_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """No cluster ever comes, so every job stays queued; the queue holds two."""
    results = tmp_path_factory.mktemp("small-queue")
    environ = {
        "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}", "GATEWAY_RESULTS_URL": str(results), "GATEWAY_MAX_QUEUED_JOBS": "2",
    }  # fmt: skip
    with running_app(environ) as app:
        yield app


def test_beyond_the_queues_limit_a_submission_gets_429_naming_it_with_retry_after(small_queue_app: Flask) -> None:
    http = small_queue_app.test_client()
    assert [http.post("/jobs", json={}).status_code for _ in range(2)] == [202, 202]

    refused = http.post("/jobs", json={})

    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    error = refused.json["error"]
    assert (error["code"], error["limit"], error["setting"]) == ("too_many_queued_jobs", 2, "GATEWAY_MAX_QUEUED_JOBS")
    assert "GATEWAY_MAX_QUEUED_JOBS" in error["message"]
    assert len(http.get("/jobs?status=queued").json["jobs"]) == 2, "nothing of the refused one was kept"
