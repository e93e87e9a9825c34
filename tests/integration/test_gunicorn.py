"""The gateway as the container runs it: gunicorn with gunicorn.conf.py, called with curl."""

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import PROJECT, RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import LocalS3
from devtools.processes import free_port, start_process, stop_process
from helpers import assert_all_gone, assert_complete_result, descendants, listing, new_secret


def curl(url: str, *options: str) -> tuple[int, dict]:
    """GET with curl as a notebook user would; return the HTTP status and the JSON body."""
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "120", "--write-out", "\n%{http_code}", *options, url],
        capture_output=True,
        text=True,
        check=True,
    )
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


PREFIX = f"{BUCKET}/gunicorn"


@pytest.fixture(scope="module")
def served(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from serve_for_module(tmp_path_factory, "gunicorn", f"s3://{PREFIX}")


def test_curl_submits_a_job_that_reads_back(served: RunningGateway, results_fs) -> None:
    status, body = curl(f"{served.url}/submit_job/curl-job-1")
    assert status == 200, body
    assert body["url"] == f"s3://{PREFIX}/curl-job-1"
    assert_complete_result(results_fs, body, PREFIX)


@pytest.mark.parametrize("path", ["..", "%2e%2e", "%2E%2E/%2E%2E/escape", "a%2Fb", "a/../../b", "z" * 129, ".zarray", ""])
def test_curl_bad_ids_get_json_errors_and_write_nothing(served: RunningGateway, results_fs, path: str) -> None:
    before = listing(results_fs, BUCKET)
    status, body = curl(f"{served.url}/submit_job/{path}", "--path-as-is")
    assert (status, body["error"]["code"]) == (400, "invalid_job_id") and body["error"]["message"]
    assert listing(results_fs, BUCKET) == before


def test_curl_a_repeat_is_the_same_job_and_another_seed_is_409_naming_it(served: RunningGateway) -> None:
    first = curl(f"{served.url}/submit_job/curl-dup")
    assert first[0] == 200
    assert curl(f"{served.url}/submit_job/curl-dup") == first
    status, body = curl(f"{served.url}/submit_job/curl-dup?seed=7")
    assert status == 409
    assert body["error"]["url"] == f"s3://{PREFIX}/curl-dup"
    assert body["error"]["differences"] == {"seed": {"existing": first[1]["parameters"]["seed"], "requested": 7}}


def test_sigterm_stops_gunicorn_and_every_cluster_process(s3: LocalS3, tmp_path: Path) -> None:
    gateway = start_gunicorn_gateway({**os.environ, "GATEWAY_RESULTS_URL": f"s3://{BUCKET}/gunicorn-sigterm"}, log_file=tmp_path / "gateway.log")
    processes = descendants(gateway.process.pid)
    assert len(processes) >= 4, "a gunicorn worker and three Dask worker processes"

    gateway.process.send_signal(signal.SIGTERM)

    assert gateway.process.wait(timeout=90) == 0, gateway.log()
    assert_all_gone(processes, timeout=30)
    assert "Dask cluster ready: local with 3 workers" in gateway.log()


def test_a_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "gateway:app"]
    environ = {**os.environ, "GATEWAY_N_WORKERS": "three"}
    process = start_process(command, env=environ, log_file=log, cwd=PROJECT)
    try:
        assert process.wait(timeout=60) != 0
    finally:
        stop_process(process)
    assert "GATEWAY_N_WORKERS='three' is not a whole number" in log.read_text()


def test_the_readmes_first_example_runs_as_written(served: RunningGateway, results_fs) -> None:
    """The scientist's first screen: its code block, unchanged, in a fresh Python with a notebook's environment."""
    readme = (PROJECT / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'job_id="my-first-job"' in example and "job.wait()" in example and "job.open()" in example
    # Here the gateway asks nobody's name: the token is sent and not checked. A notebook holds no storage key.
    environ = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    environ |= {"GATEWAY_URL": served.url, "JUPYTERHUB_API_TOKEN": "a-notebooks-token", "MPLBACKEND": "Agg"}
    for run in ("first", "again, as a cell is"):
        done = subprocess.run([sys.executable, "-c", example], env=environ, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (run, done.stdout + done.stderr)
    status, record = curl(f"{served.url}/jobs/my-first-job")
    assert status == 200
    assert_complete_result(results_fs, record, PREFIX)
    # Its picture is the gateway's full preview of such a job: a PNG of the same size.
    picture = (PROJECT / "docs" / "preview.png").read_bytes()
    assert "](docs/preview.png)" in readme.split("```sh", 1)[0]
    drawn = subprocess.run(["curl", "--silent", "--fail", f"{served.url}/jobs/my-first-job/preview.png"], capture_output=True, check=True).stdout
    assert picture[:8] == drawn[:8] == b"\x89PNG\r\n\x1a\n" and picture[16:24] == drawn[16:24], "the same width and height"


def test_the_user_guides_first_job_answers_as_shown_and_its_polling_example_runs(served: RunningGateway) -> None:
    guide = (PROJECT / "docs" / "user-guide.md").read_text().split("## Your first job", 1)[1]
    console = guide.split("```console\n", 1)[1].split("```", 1)[0]
    shown = json.loads(console.split("\n", 1)[1])
    status, record = curl(f"{served.url}/submit_job/run-7")
    assert status == 200 and list(record) == list(shown), "the record shown has the fields, in the order, of a real one"
    example = guide.split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", example], env={**os.environ, "GATEWAY_URL": served.url}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    progress = [json.loads(line.replace("'", '"')) for line in done.stdout.splitlines()[:-1]]
    assert progress and progress[-1] == {"chunks_written": 400, "chunks_total": 400}
    assert done.stdout.splitlines()[-1].startswith(f"done {served.url}/jobs/")


def test_the_access_log_line_of_the_oauth_callback_has_neither_its_code_nor_its_state(tmp_path: Path, http) -> None:
    """A code read from the log before the browser uses it would be a login; the hub is not there, which changes no line.

    The code is the test's own, sent in its requests (which the responses log keeps): its log is what is checked here."""
    environ = {
        **os.environ,
        "GATEWAY_RESULTS_URL": str(tmp_path / "results"),
        "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_AUTH": "jupyterhub",
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api",
        "JUPYTERHUB_API_TOKEN": new_secret(),
        "JUPYTERHUB_OAUTH_CALLBACK_URL": "http://127.0.0.1:8000/oauth_callback",
    }
    (tmp_path / "results").mkdir()
    # Not ready without a cluster: its port is enough.
    gateway = start_gunicorn_gateway(environ, log_file=tmp_path / "gateway.log", ready_timeout=0)
    try:
        login = http.get(f"{gateway.url}/", headers={"Accept": "text/html"}, allow_redirects=False, timeout=30)
        state = parse_qs(urlsplit(login.headers["Location"]).query)["state"][0]
        code = f"one-time-code-{uuid.uuid4().hex}"
        back = http.get(f"{gateway.url}/oauth_callback", params={"code": code, "state": state}, cookies=login.cookies, timeout=30)
        refused = http.get(f"{gateway.url}/oauth_callback", params={"code": code, "state": "not-the-cookies"}, timeout=30)
        unrelated = http.get(f"{gateway.url}/healthz", params={"state": "kept"}, timeout=30)
    finally:
        stop_process(gateway.process, timeout=60)

    assert (back.status_code, refused.status_code, unrelated.status_code) == (503, 401, 200), "the hub could not be asked; a state of no login"
    lines = gateway.log().splitlines()
    callbacks = [line for line in lines if "/oauth_callback?" in line]
    assert len(callbacks) == 2 and all('?[hidden] HTTP/1.1"' in line for line in callbacks), callbacks
    assert not [line for line in lines if code in line or state in line or "not-the-cookies" in line]
    assert [line for line in lines if '"GET /healthz?state=kept HTTP/1.1" 200' in line], "every other line is gunicorn's own"
