"""Malformed requests to the gateway under gunicorn: each a 4xx JSON error naming the problem, and nothing written.

The requests go out byte for byte as written here (``http.client`` neither
normalises ``..`` nor re-encodes ``%2F``), as a hostile or careless client
would send them. Characters a URL cannot hold are sent percent-encoded, as
every HTTP client sends them.
"""

import base64
import http.client
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3
from helpers import gateways_cluster, responses_log, wait_for_the_stop, wait_for_the_tasks, workers_held
from science_gateway.openapi import openapi_document
from science_gateway.settings import MAX_REQUEST_LINE

PREFIX = f"{BUCKET}/bad-input"
JSON = {"Content-Type": "application/json"}
# Nested past what Python's JSON reader takes, inside an app's parameters, and in a cursor.
DEEP_FACTOR = '{"app": "coarsen", "parameters": {"source": "x", "factor": ' + "[" * 3000 + "]" * 3000 + "}}"
# Twice as deep as the JSON decoder recurses (sys.getrecursionlimit(), 1000), and short enough for gunicorn's request line.
DEEP_CURSOR = base64.urlsafe_b64encode(b"[" * 2000).decode()
# A side of 401 digits: more than a float holds.
HUGE_SIDE = "1" + "0" * 400

# (method, path, body, headers, status, error code, words the message must contain)
CASES = [
    # job ids
    ("GET", "/submit_job/a/b", None, {}, 400, "invalid_job_id", "1 to 128 characters"),
    ("GET", "/submit_job/a%2Fb", None, {}, 400, "invalid_job_id", "'a/b'"),
    ("GET", "/submit_job/..", None, {}, 400, "invalid_job_id", "'..'"),
    ("GET", "/submit_job/%2e%2e", None, {}, 400, "invalid_job_id", "'..'"),
    ("GET", "/submit_job/%2E%2E/%2E%2E/escape", None, {}, 400, "invalid_job_id", "not starting with '.'"),
    ("GET", "/submit_job/../../etc/passwd", None, {}, 400, "invalid_job_id", "1 to 128 characters"),
    ("GET", "/submit_job/.hidden", None, {}, 400, "invalid_job_id", "not starting with '.'"),
    ("GET", "/submit_job/a%20b", None, {}, 400, "invalid_job_id", "'a b'"),
    ("GET", "/submit_job/caf%C3%A9", None, {}, 400, "invalid_job_id", "letters, digits"),
    ("GET", "/submit_job/a%00b", None, {}, 400, "invalid_job_id", "1 to 128 characters"),
    ("GET", "/submit_job/a%0Ab", None, {}, 400, "invalid_job_id", "1 to 128 characters"),
    ("GET", "/submit_job/" + "z" * 129, None, {}, 400, "invalid_job_id", "1 to 128 characters"),
    ("GET", "/submit_job/", None, {}, 400, "invalid_job_id", "1 to 128 characters"),
    ("GET", "/jobs/a%2F..%2F..%2Fb", None, {}, 400, "invalid_job_id", "1 to 128 characters"),
    ("DELETE", "/jobs/..", None, {}, 400, "invalid_job_id", "not starting with '.'"),
    ("POST", "/jobs", json.dumps({"job_id": "../escape"}), JSON, 400, "invalid_job_id", "'../escape'"),
    ("POST", "/jobs", json.dumps({"job_id": ""}), JSON, 400, "invalid_job_id", "1 to 128 characters"),
    ("POST", "/jobs", json.dumps({"job_id": 7}), JSON, 400, "invalid_job_id", "job_id must be a string"),
    # parameters
    ("GET", "/submit_job/p1?seed=abc", None, {}, 400, "invalid_parameters", "/seed: 'abc' is not of type 'integer', 'null'"),
    ("GET", "/submit_job/p2?seed=-1", None, {}, 400, "invalid_parameters", "/seed: -1 is less than the minimum of 0"),
    ("GET", "/submit_job/p3?seed=99999999999999999999", None, {}, 400, "invalid_parameters", "/seed: 99999999999999999999 is greater than the maximum"),
    ("GET", "/submit_job/p4?shape=0,10", None, {}, 400, "invalid_parameters", "/shape/0: 0 is less than the minimum of 1"),
    ("GET", "/submit_job/p5?shape=-5,5", None, {}, 400, "invalid_parameters", "/shape/0: -5 is less than the minimum of 1"),
    ("GET", "/submit_job/p6?shape=ten,ten", None, {}, 400, "invalid_parameters", "/shape/0: 'ten' is not of type 'integer' (and 1 more in error.details)"),
    ("GET", "/submit_job/p7?shape=10,10,10", None, {}, 400, "invalid_parameters", "/shape: [10, 10, 10] is too long"),
    ("GET", "/submit_job/p8?shape=1000000,1000000", None, {}, 413, "job_too_large", "GATEWAY_MAX_ELEMENTS"),
    ("GET", "/submit_job/p9?shape=100000,100000&chunks=10,10", None, {}, 413, "job_too_large", "GATEWAY_MAX_ELEMENTS"),
    ("GET", "/submit_job/p10?shape=10000,10000&chunks=10,10", None, {}, 413, "job_too_large", "GATEWAY_MAX_CHUNKS"),
    ("GET", "/submit_job/p11?shape=100,100&chunks=200,200", None, {}, 400, "invalid_parameters", "no larger than shape"),
    ("GET", "/submit_job/p12?chunks=0,0", None, {}, 400, "invalid_parameters", "/chunks/0: 0 is less than the minimum of 1"),
    ("GET", "/submit_job/p13?dtype=int8", None, {}, 400, "invalid_parameters", "/dtype: 'int8' is not one of ['float32', 'float64']"),
    ("GET", "/submit_job/p14?dtype=", None, {}, 400, "invalid_parameters", "/dtype: '' is not one of"),
    ("GET", "/submit_job/p15?wait=perhaps", None, {}, 400, "invalid_parameters", "wait must be true or false"),
    ("GET", "/submit_job/p16?seed=1&seed=2", None, {}, 400, "invalid_parameters", "more than once"),
    ("GET", "/submit_job/p17?colour=red", None, {}, 400, "invalid_parameters", "unknown query parameter 'colour'"),
    ("GET", f"/submit_job/p18?shape={HUGE_SIDE},1", None, {}, 400, "invalid_parameters", "0000' is not of type 'integer'"),
    # bodies
    ("POST", "/jobs", '{"seed": ', JSON, 400, "invalid_parameters", "must be a JSON object"),
    ("POST", "/jobs", "[1, 2]", JSON, 400, "invalid_parameters", "must be a JSON object"),
    ("POST", "/jobs", "[" * 5000 + "]" * 5000, JSON, 400, "invalid_parameters", "must be a JSON object"),
    ("POST", "/jobs", DEEP_FACTOR, JSON, 400, "invalid_parameters", "must be a JSON object"),
    ("POST", "/jobs", "[" * 8192 + "]" * 8192, JSON, 400, "invalid_parameters", "must be a JSON object"),
    ("POST", "/jobs", json.dumps({"shape": [int(HUGE_SIDE), 1]}), JSON, 400, "invalid_parameters", "0000 is greater than the maximum of 1099511627776"),
    ("POST", "/jobs", '{"app": "julia-set", "parameters": {"c": [NaN, Infinity]}}', JSON, 400, "invalid_parameters", "must be a JSON object"),
    ("POST", "/jobs", '"a string"', JSON, 400, "invalid_parameters", "must be a JSON object"),
    ("POST", "/jobs", "seed=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "application/json"),
    ("POST", "/jobs", "{}", {"Content-Type": "text/plain"}, 415, "unsupported_media_type", "application/json"),
    ("POST", "/jobs", json.dumps({"size": 3}), JSON, 400, "invalid_parameters", "/size: unknown parameter; the parameters are seed, shape"),
    ("POST", "/jobs", json.dumps({"shape": [10.5, 10]}), JSON, 400, "invalid_parameters", "/shape/0: 10.5 is not of type 'integer'"),
    ("POST", "/jobs", json.dumps({"shape": [True, 10]}), JSON, 400, "invalid_parameters", "/shape/0: True is not of type 'integer'"),
    ("POST", "/jobs", json.dumps({"seed": "7; rm -rf /"}), JSON, 400, "invalid_parameters", "/seed: '7; rm -rf /' is not of type"),
    ("POST", "/jobs?wait=true", "{}", JSON, 400, "invalid_parameters", "unknown query parameter 'wait'"),
    # apps
    ("POST", "/jobs", json.dumps({"app": "histogram"}), JSON, 404, "unknown_app", "no app 'histogram' here; the apps are coarsen, julia-set, random-array"),
    ("POST", "/jobs", json.dumps({"app": ["random-array"]}), JSON, 404, "unknown_app", "no app \"['random-array']\" here"),
    ("POST", "/jobs", json.dumps({"app": "random-array", "seed": 7}), JSON, 400, "invalid_parameters", "unknown field 'seed'; a job with an app has app"),
    ("POST", "/jobs", json.dumps({"app": "random-array", "parameters": [7]}), JSON, 400, "invalid_parameters", "/: [7] is not of type 'object'"),
    ("POST", "/jobs", json.dumps({"app": "coarsen", "parameters": {"factor": 2}}), JSON, 400, "invalid_parameters", "/: 'source' is a required property"),
    ("POST", "/jobs", json.dumps({"app": "coarsen", "parameters": {"source": "none-here", "factor": 2}}), JSON, 404, "source_not_found", "no job 'none-here'"),
    ("GET", "/apps/histogram", None, {}, 404, "unknown_app", "no app 'histogram' here"),
    ("GET", "/apps/..%2F..%2Fetc", None, {}, 404, "unknown_app", "no app '../../etc' here"),
    # listing
    ("GET", "/jobs?limit=0", None, {}, 400, "invalid_parameters", "limit must be an integer"),
    ("GET", "/jobs?limit=lots", None, {}, 400, "invalid_parameters", "limit must be an integer"),
    ("GET", "/jobs?status=finished", None, {}, 400, "invalid_parameters", "status must be one of"),
    ("GET", "/jobs?cursor=not-a-cursor", None, {}, 400, "invalid_parameters", "cursor is not one"),
    ("GET", f"/jobs?cursor={DEEP_CURSOR}", None, {}, 400, "invalid_parameters", "cursor is not one"),
    ("GET", "/jobs?cursor=" + "%5B" * 1000, None, {}, 400, "invalid_parameters", "cursor is not one"),
    ("GET", "/jobs/no-such-job", None, {}, 404, "job_not_found", "no job 'no-such-job'"),
    # methods and routes
    ("POST", "/submit_job/m1", None, {}, 405, "method_not_allowed", "not allowed"),
    ("DELETE", "/submit_job/m2", None, {}, 405, "method_not_allowed", "not allowed"),
    ("PUT", "/jobs", "{}", JSON, 405, "method_not_allowed", "not allowed"),
    ("PATCH", "/jobs/m3", "{}", JSON, 405, "method_not_allowed", "not allowed"),
    ("DELETE", "/", None, {}, 405, "method_not_allowed", "not allowed"),
    ("GET", "/no/such/route", None, {}, 404, "not_found", "not found"),
]


def send(url: str, method: str, path: str, body: str | None, headers: dict[str, str], log: Path) -> tuple[int, str, str]:
    """One request exactly as given; the status, content type and body text."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", errors="replace")
    finally:
        connection.close()
    with log.open("a", encoding="utf-8") as out:
        out.write(f"{method} {path} {response.status}\n{text}\n")
    return response.status, response.getheader("Content-Type", ""), text


def on_disk(root: Path) -> dict[str, int]:
    """Every file the S3 server keeps, with its size."""
    return {str(path.relative_to(root)): path.stat().st_size for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def served(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from serve_for_module(tmp_path_factory, "bad-input", f"s3://{PREFIX}", GATEWAY_MAX_CHUNKS="1000")


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({(method, path, body) for method, path, body, *_ in CASES}) == len(CASES), "no case twice"


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code", "words"), CASES)
def test_a_malformed_request_gets_a_json_4xx_naming_the_problem_and_writes_nothing(
    served: RunningGateway, s3: LocalS3, tmp_path_factory: pytest.TempPathFactory,
    method: str, path: str, body: str | None, headers: dict, status: int, code: str, words: str,
) -> None:  # fmt: skip
    before = on_disk(s3.data_dir)
    got, content_type, text = send(served.url, method, path, body, headers, responses_log(tmp_path_factory.getbasetemp()))
    assert (got, content_type) == (status, "application/json"), text
    error = json.loads(text)["error"]
    assert error["code"] == code
    assert words.lower() in error["message"].lower(), error["message"]
    assert on_disk(s3.data_dir) == before


def test_a_request_line_over_the_limit_is_gunicorns_414_as_the_document_says(served: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> None:
    log = responses_log(tmp_path_factory.getbasetemp())
    path = "/jobs?cursor="
    path += "a" * (MAX_REQUEST_LINE - len(f"GET {path} HTTP/1.1"))
    assert len(f"GET {path} HTTP/1.1") == MAX_REQUEST_LINE
    assert send(served.url, "GET", path, None, {}, log)[:2] == (400, "application/json"), "the longest line the gateway reads"
    status, content_type, _ = send(served.url, "GET", path + "a", None, {}, log)
    assert (status, content_type.split(";")[0]) == (414, "text/html")
    assert "text/html" in openapi_document()["paths"]["/jobs"]["get"]["responses"]["414"]["content"]


def test_a_good_job_writes_only_under_the_results_url(served: RunningGateway, s3: LocalS3, http) -> None:
    """Jobs, cancels and deletes touch nothing outside GATEWAY_RESULTS_URL, and create no bucket."""
    outside = {path: size for path, size in on_disk(s3.data_dir).items() if not path.startswith("gateway-results/bad-input/")}
    buckets = {path.name for path in s3.data_dir.iterdir()}

    assert http.get(f"{served.url}/submit_job/kept?shape=100,100&chunks=10,10", timeout=60).status_code == 200
    assert http.get(f"{served.url}/submit_job/removed?shape=100,100&chunks=10,10", timeout=60).status_code == 200
    assert http.delete(f"{served.url}/jobs/removed", timeout=60).status_code == 204
    with ThreadPoolExecutor(1) as pool, gateways_cluster(served.log_file.parent) as cluster:
        # Held running, its array begun: the cancel removes what it wrote.
        with workers_held(cluster):
            assert http.post(f"{served.url}/jobs", json={"job_id": "cancelled", "shape": [1000, 1000], "chunks": [100, 100]}, timeout=60).status_code == 202
            wait_for_the_tasks(cluster, "cancelled")
            # The DELETE of a running job answers once its tasks have stopped, after the workers go on.
            cancelled = pool.submit(http.delete, f"{served.url}/jobs/cancelled", timeout=120)
            wait_for_the_stop(cluster, "cancelled")
        assert cancelled.result(timeout=120).json()["status"] == "cancelled"

    after = on_disk(s3.data_dir)
    assert {path for path in after if path.startswith("gateway-results/bad-input/kept/")}, "the job was written"
    assert {path: size for path, size in after.items() if not path.startswith("gateway-results/bad-input/")} == outside
    assert {path.name for path in s3.data_dir.iterdir()} == buckets
