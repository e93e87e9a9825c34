"""The Python client (client/) and its CLI against the gateway under gunicorn with a local S3 server.

The CLI runs as a subprocess (``python -m science_gateway_client``, the ``science-gateway`` script's code), once per
exit code. Jobs held with paused workers, never by their size.
"""

import contextlib
import fcntl
import json
import os
import pty
import re
import shlex
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import PROJECT, RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import LocalS3
from devtools.processes import free_port, stop_process
from helpers import gateways_cluster, wait_for, wait_for_the_stop, wait_for_the_tasks, workers_held
from science_gateway_client import Gateway, GatewayUnavailable, JobCancelled, JobFailed, JobNotDone, JobNotFound, TooManyRequests, WaitTimeout

PREFIX = f"{BUCKET}/client"
SMALL = {"shape": [100, 100], "chunks": [10, 10]}
REFUSED_SUBMISSION = '"POST /jobs HTTP/1.1" 429'
# Event streams the gateway serves at once: a test takes them all to see the client poll instead.
STREAMS = 2


@pytest.fixture(scope="module")
def served(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # One job runs at a time and one waits: a held job and a queued one fill the gateway, for the 429s.
    yield from serve_for_module(
        tmp_path_factory, "client", f"s3://{PREFIX}",
        GATEWAY_N_WORKERS="2", GATEWAY_MAX_RUNNING_JOBS="1", GATEWAY_MAX_QUEUED_JOBS="1", GATEWAY_MAX_STREAMS=str(STREAMS),
    )  # fmt: skip


@pytest.fixture
def gateway(served: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """``Gateway()`` with no arguments, as in a notebook: GATEWAY_URL, and the token of the session's environment."""
    monkeypatch.setenv("GATEWAY_URL", served.url)
    return Gateway()


def cli(*arguments: str, url: str | None = None, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The science-gateway command as installed (its script runs this module's main): stderr is no terminal here, so it shows no progress."""
    env = {**os.environ, **(environ or {})}
    if url is not None:
        env["GATEWAY_URL"] = url
    return subprocess.run([sys.executable, "-m", "science_gateway_client", *arguments], env=env, capture_output=True, text=True, timeout=300)


def test_gateway_reads_its_address_from_the_environment_and_says_which_variable_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    with pytest.raises(ValueError, match="set GATEWAY_URL"):
        Gateway()
    assert Gateway(url="http://127.0.0.1:1/").url == "http://127.0.0.1:1", "an explicit address, without its trailing slash"


def test_submit_wait_open_a_job_and_a_repeat_is_the_same_job(gateway: Gateway) -> None:
    job = gateway.submit("random-array", seed=7, **SMALL)
    assert job.job_id.startswith("random-array-") and job.record["status"] == "queued", "a new job's record as it was queued"

    record = job.wait(progress=False)

    assert record["status"] == job.status == "done"
    assert record["progress"] == {"chunks_written": 100, "chunks_total": 100}
    dataset = job.open()
    assert dict(dataset.sizes) == {"y": 100, "x": 100} and str(dataset["data"].dtype) == "float32"
    again = gateway.submit("random-array", job.job_id, seed=7, **SMALL)
    assert again.record["status"] == "done" and again.record["submitted_at"] == record["submitted_at"]


def test_wait_shows_a_bar_of_the_chunks_written(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    job = gateway.submit("random-array", **SMALL)
    job.wait()
    assert "100/100" in capsys.readouterr().err


def test_apps_usage_and_every_page_of_jobs(gateway: Gateway) -> None:
    assert {"random-array", "coarsen"} <= {app["name"] for app in gateway.apps()}
    submitted = [gateway.submit("random-array", **SMALL) for _ in range(5)]
    for job in submitted:
        job.wait(progress=False)

    listed = [job.job_id for job in gateway.jobs(page_size=2)]

    assert {job.job_id for job in submitted} <= set(listed) and len(listed) == len(set(listed)), "every page, no job twice"
    usage = gateway.usage()
    kept = [job for job in gateway.jobs() if job.record["status"] in ("queued", "running", "done")]
    assert usage["jobs"] == len(kept) and usage["stored_bytes"] > 0 and usage["quota_bytes"] is None


def test_a_job_not_found_is_its_own_error_naming_the_code(gateway: Gateway) -> None:
    with pytest.raises(JobNotFound) as raised:
        gateway.job("no-such-job")
    assert (raised.value.status, raised.value.code) == (404, "job_not_found")


def test_cancel_a_running_job_and_wait_raises_with_its_status_then_delete_removes_it(gateway: Gateway, served: RunningGateway) -> None:
    with ThreadPoolExecutor(1) as pool, gateways_cluster(served.log_file.parent) as cluster:
        with workers_held(cluster):
            job = gateway.submit("random-array", **SMALL)
            wait_for_the_tasks(cluster, job.job_id)
            with pytest.raises(JobNotDone):
                job.open()
            with pytest.raises(WaitTimeout):
                job.wait(progress=False, timeout=0.5)
            # The DELETE of a running job answers once its tasks have stopped, after the workers go on.
            cancelling = pool.submit(job.cancel)
            wait_for_the_stop(cluster, job.job_id)
        assert cancelling.result(timeout=120)["status"] == "cancelled"

    with pytest.raises(JobCancelled) as raised:
        job.wait(progress=False)
    assert raised.value.status == "cancelled" and raised.value.record["job_id"] == job.job_id
    job.delete()
    with pytest.raises(JobNotFound):
        job.refresh()


def test_a_failed_job_raises_with_the_gateways_code_and_the_cli_exits_1(gateway: Gateway, served: RunningGateway) -> None:
    """A queued coarsen job whose source is deleted fails at once with source_deleted."""
    source = gateway.submit("random-array", **SMALL)
    source.wait(progress=False)
    with ThreadPoolExecutor(1) as pool, gateways_cluster(served.log_file.parent) as cluster:
        with workers_held(cluster):
            blocker = gateway.submit("random-array", **SMALL)
            wait_for_the_tasks(cluster, blocker.job_id)
            coarsened = gateway.submit("coarsen", source=source.job_id, factor=10)
            assert coarsened.status == "queued", "one job runs at a time"
            source.delete()
            with pytest.raises(JobFailed) as raised:
                coarsened.wait(progress=False)
            cancelling = pool.submit(blocker.cancel)
            wait_for_the_stop(cluster, blocker.job_id)
        cancelling.result(timeout=120)

    assert raised.value.code == "source_deleted" and source.job_id in raised.value.message
    failed, cancelled = cli("wait", coarsened.job_id, url=served.url), cli("wait", blocker.job_id, "--json", url=served.url)
    assert failed.returncode == 1 and "source_deleted" in failed.stderr and failed.stdout.startswith(f"{coarsened.job_id}\tfailed"), failed
    assert cancelled.returncode == 1 and json.loads(cancelled.stdout)["status"] == "cancelled", cancelled


def test_a_submission_refused_with_429_is_sent_again_after_retry_after(gateway: Gateway, served: RunningGateway) -> None:
    """A held job runs, a queued one fills the queue: the next submission gets 429 too_many_queued_jobs with Retry-After.

    A client that may not wait that long raises at once; one that may is refused, then admitted once the queue has room.
    """
    impatient = Gateway(served.url, retry_for=0)
    with ThreadPoolExecutor(2) as pool, gateways_cluster(served.log_file.parent) as cluster:
        with workers_held(cluster):
            blocker = gateway.submit("random-array", **SMALL)
            wait_for_the_tasks(cluster, blocker.job_id)
            queued = gateway.submit("random-array", **SMALL)
            with pytest.raises(TooManyRequests) as raised:
                impatient.submit("random-array", **SMALL)
            refused = served.log().count(REFUSED_SUBMISSION)
            cli_refused = cli("submit", "random-array", "--retry-for", "0", url=served.url)

            retried = pool.submit(gateway.submit, "random-array", **SMALL)
            wait_for(lambda: served.log().count(REFUSED_SUBMISSION) > refused + 1, 60, "the client's submission to be refused")
            assert not retried.done()
            queued.cancel()
            admitted = retried.result(timeout=120)
            assert admitted.record["status"] == "queued"
            admitted.cancel()
            cancelling = pool.submit(blocker.cancel)
            wait_for_the_stop(cluster, blocker.job_id)
        cancelling.result(timeout=120)

    assert (raised.value.status, raised.value.code, raised.value.retry_after) == (429, "too_many_queued_jobs", 10)
    assert cli_refused.returncode == 3 and "too_many_queued_jobs" in cli_refused.stderr, cli_refused


def test_the_cli_submits_waits_and_finds_a_job_exit_0(served: RunningGateway) -> None:
    parameters = ["-p", "seed=7", "-p", "shape=[100,100]", "-p", "chunks=[10,10]", "-p", "dtype=float64"]
    submitted = cli("submit", "random-array", *parameters, "--wait", "--json", url=served.url)
    assert submitted.returncode == 0, submitted
    record = json.loads(submitted.stdout)
    assert record["status"] == "done" and record["parameters"]["seed"] == 7 and record["dtype"] == "float64"
    assert submitted.stderr == "", "no progress where stderr is no terminal"
    job_id = record["job_id"]

    named = cli("submit", "random-array", "--id", "cli-named", "-p", "shape=[100,100]", "-p", "chunks=[10,10]", url=served.url)
    assert named.returncode == 0 and named.stdout.startswith("cli-named\t"), named
    assert cli("wait", "cli-named", url=served.url).returncode == 0
    status = cli("status", job_id, url=served.url)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}\tdone\t100/100 chunks"), status
    url = cli("url", job_id, url=served.url)
    assert (url.returncode, url.stdout.strip()) == (0, record["http_url"])
    listed = cli("jobs", "--json", url=served.url)
    assert listed.returncode == 0 and job_id in {job["job_id"] for job in json.loads(listed.stdout)}
    apps = cli("apps", url=served.url)
    assert apps.returncode == 0 and "random-array" in apps.stdout
    assert cli("cancel", job_id, url=served.url).stdout.startswith(f"{job_id}\tdone"), "a finished job is left as it is"
    assert cli("delete", job_id, url=served.url).returncode == 0
    gone = cli("status", job_id, url=served.url)
    assert gone.returncode == 3 and "job_not_found" in gone.stderr, gone


def test_the_cli_shows_its_progress_bar_on_stderr_when_stderr_is_a_terminal(served: RunningGateway) -> None:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows of 100 columns, as a terminal window has
    shown = bytearray()

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO once the command has exited and the terminal is closed
            while chunk := os.read(controller, 4096):
                shown.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        command = [sys.executable, "-m", "science_gateway_client", "submit", "random-array", "-p", "shape=[100,100]", "-p", "chunks=[10,10]", "--wait"]
        done = subprocess.run(command, env={**os.environ, "GATEWAY_URL": served.url}, stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=300)
    finally:
        os.close(terminal)
        reader.join(timeout=60)
        os.close(controller)
    assert done.returncode == 0 and "\tdone\t100/100 chunks" in done.stdout, done
    assert b"100/100" in shown and b"chunk/s" in shown, bytes(shown)


def test_the_cli_exits_2_on_a_usage_error(served: RunningGateway) -> None:
    no_id = cli("status", url=served.url)
    assert no_id.returncode == 2 and "ID" in no_id.stderr, no_id
    bad_parameter = cli("submit", "random-array", "-p", "seed", url=served.url)
    assert bad_parameter.returncode == 2 and "NAME=VALUE" in bad_parameter.stderr, bad_parameter
    environ = {name: value for name, value in os.environ.items() if name != "GATEWAY_URL"}
    done = subprocess.run([sys.executable, "-m", "science_gateway_client", "apps"], env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "GATEWAY_URL" in done.stderr, done


def test_the_cli_exits_3_when_the_gateway_refuses(served: RunningGateway) -> None:
    refused = cli("submit", "random-array", "-p", "shape=[0,100]", url=served.url)
    assert refused.returncode == 3 and "invalid_parameters" in refused.stderr and refused.stdout == "", refused


def test_the_cli_exits_4_when_no_gateway_answers_and_the_client_raises_gateway_unavailable() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GatewayUnavailable, match="check the address"):
        Gateway(nobody, retry_for=0).apps()
    unavailable = cli("apps", "--retry-for", "0", url=nobody)
    assert unavailable.returncode == 4 and "no answer from the gateway" in unavailable.stderr, unavailable


def test_the_cli_exits_4_on_a_gateway_that_answers_5xx(s3: LocalS3, tmp_path: Path) -> None:
    """A gateway whose results bucket does not exist answers a submission 503 storage_error (a cluster it does not need),
    with a Retry-After that ends past --retry-for 0: the client says so at once."""
    environ = {**os.environ, "GATEWAY_RESULTS_URL": "s3://no-such-bucket", "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}"}
    broken = start_gunicorn_gateway(environ, log_file=tmp_path / "gateway.log", ready_timeout=0)
    try:
        done = cli("submit", "random-array", "--json", "--retry-for", "0", url=broken.url)
    finally:
        stop_process(broken.process, timeout=60)
    assert done.returncode == 4 and "503 storage_error" in done.stderr and json.loads(done.stdout)["error"]["code"] == "storage_error", done


def test_the_user_guides_command_lines_print_what_it_shows(served: RunningGateway) -> None:
    guide = (PROJECT / "docs" / "user-guide.md").read_text().split("## The Python client and the command line", 1)[1]
    console = guide.split("```console\n", 1)[1].split("```", 1)[0]
    runs = [run.split("\n", 1) for run in console.split("$ science-gateway ")[1:]]
    assert len(runs) == 2
    for command, shown in runs:
        done = cli(*shlex.split(command), url=served.url)
        assert (done.returncode, done.stdout) == (0, shown.replace("http://127.0.0.1:8000", served.url)), done


class Relay:
    """A TCP relay in front of the gateway, as a proxy is: it keeps what each connection carried, and cuts one on demand.

    Its threads record their failures in ``failures``; a connection's end is no failure.
    """

    def __init__(self, target: str, lose_the_answer_to: bytes | None = None) -> None:
        self.target = urlsplit(target)
        # The first request that starts so reaches the gateway, and its answer is lost: the connection is cut instead.
        self.lose_the_answer_to = lose_the_answer_to
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[dict[str, Any]] = []
        self.failures: list[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                caller, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                gateway = socket.create_connection((self.target.hostname, self.target.port), timeout=30)
                gateway.settimeout(None)
            except OSError as exc:
                self.failures.append(exc)
                caller.close()
                continue
            connection = {"sent": bytearray(), "received": bytearray(), "sockets": (caller, gateway)}
            self.connections.append(connection)
            threading.Thread(target=self._pump, args=(caller, gateway, connection["sent"]), daemon=True).start()
            threading.Thread(target=self._pump, args=(gateway, caller, connection["received"], connection["sent"]), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, kept: bytearray, asked: bytearray | None = None) -> None:
        try:
            while chunk := source.recv(65536):
                kept += chunk
                if asked is not None and self.lose_the_answer_to and asked.startswith(self.lose_the_answer_to):
                    self.lose_the_answer_to = None
                    return  # the finally cuts both ends
                target.sendall(chunk)
        except OSError:
            pass  # the other side closed, or the test cut the connection
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def streams(self, job_id: str) -> list[dict[str, Any]]:
        """The connections that asked for the job's events, in order."""
        return [connection for connection in list(self.connections) if f"GET /jobs/{job_id}/events ".encode() in connection["sent"]]

    @staticmethod
    def cut(connection: dict[str, Any]) -> None:
        for end in connection["sockets"]:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            self.cut(connection)


def event_ids(stream: bytes) -> list[int]:
    return [int(found) for found in re.findall(rb"^id: (\d+)$", stream, flags=re.MULTILINE)]


def test_a_wait_whose_event_stream_is_cut_mid_job_resumes_after_its_last_event_with_none_repeated(served: RunningGateway) -> None:
    relay = Relay(served.url)
    try:
        client = Gateway(relay.url)
        with ThreadPoolExecutor(1) as pool, gateways_cluster(served.log_file.parent) as cluster:
            with workers_held(cluster):
                job = client.submit("random-array", **SMALL)
                wait_for_the_tasks(cluster, job.job_id)
                waited = pool.submit(job.wait, progress=False)
                (first,) = wait_for(lambda: relay.streams(job.job_id), 60, "the client to follow the job's events")
                wait_for(lambda: b'"status": "running"' in first["received"], 60, "the event of the job running")
                relay.cut(first)
                wait_for(lambda: len(relay.streams(job.job_id)) == 2, 60, "the client to follow the events again")
            record = waited.result(timeout=120)
    finally:
        relay.close()

    assert relay.failures == []
    assert record["status"] == "done"
    first, second = relay.streams(job.job_id)
    before, after = event_ids(bytes(first["received"])), event_ids(bytes(second["received"]))
    assert f"\r\nLast-Event-ID: {before[-1]}\r\n".encode() in second["sent"], "resumed after the last event it had"
    assert before and after and before + after == sorted(set(before + after)), "no event seen twice, in order"
    assert b'"status": "done"' in second["received"].split(b"id: ")[-1], "the final event came on the resumed stream"


def test_a_wait_the_gateway_refuses_a_stream_polls_the_record_instead(served: RunningGateway) -> None:
    """Every stream of the gateway taken (GATEWAY_MAX_STREAMS): 429 too_many_streams, and the client asks for the record instead."""
    client = Gateway(served.url)
    refusal = "/events HTTP/1.1\" 429"
    with ThreadPoolExecutor(1) as pool, gateways_cluster(served.log_file.parent) as cluster, contextlib.ExitStack() as streams:
        with workers_held(cluster):
            job = client.submit("random-array", **SMALL)
            wait_for_the_tasks(cluster, job.job_id)
            events = f"{served.url}/jobs/{job.job_id}/events"
            taken = [streams.enter_context(requests.get(events, stream=True, timeout=60)) for _ in range(STREAMS)]
            assert [response.status_code for response in taken] == [200] * STREAMS
            refused = served.log().count(refusal)
            waited = pool.submit(job.wait, progress=False)
            wait_for(lambda: served.log().count(refusal) > refused, 60, "the client's stream to be refused")
        record = waited.result(timeout=120)
    assert record["status"] == "done"
    assert f'"GET /jobs/{job.job_id} HTTP/1.1" 200' in served.log(), "it polled the record"


def test_a_submission_whose_answer_is_lost_is_sent_again_and_is_one_job(served: RunningGateway) -> None:
    """POST /jobs with the id the client picked: sent again after the connection is cut, the gateway answers with the same job."""
    relay = Relay(served.url, lose_the_answer_to=b"POST /jobs ")
    try:
        job = Gateway(relay.url).submit("random-array", seed=11, **SMALL)
    finally:
        relay.close()

    assert relay.failures == []
    posts = [connection for connection in relay.connections if connection["sent"].startswith(b"POST /jobs ")]
    assert len(posts) == 2 and posts[0]["received"].startswith(b"HTTP/1.1 202 "), "the gateway queued the first, whose answer was lost"
    assert f'"job_id": "{job.job_id}"'.encode() in posts[0]["sent"] and f'"job_id": "{job.job_id}"'.encode() in posts[1]["sent"]
    record = job.wait(progress=False)
    assert [other.job_id for other in Gateway(served.url).jobs() if other.record["parameters"].get("seed") == 11] == [job.job_id]
    assert record["status"] == "done"
