"""The production cluster path: the gateway obtains its cluster from a real dask-gateway-server.

The S3 credentials reach the Dask workers only as the shipped values' options
handler gives them, to the gateway's own clusters (as the kubelet mounts the
Secret into worker pods): the dask-gateway-server process itself runs without them.
"""

import json
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import yaml
import zarr
from dask_gateway import BasicAuth, Gateway

from conftest import BUCKET
from devtools.gunicorn_gateway import RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import LocalS3
from devtools.processes import stop_process
from helpers import assert_all_gone, assert_complete_result, assert_computed_by_the_app, descendants, finished_job, new_secret, wait_for
from servers import PROJECT, DaskGatewayServer, dask_gateway_login_environ, start_dask_gateway_server

USER = "scientist"


@pytest.fixture(scope="module")
def dask_gateway_server(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskGatewayServer]:
    server = start_dask_gateway_server(
        tmp_path_factory.mktemp("dask-gateway"), {"gateway-results-workers": s3.environ()}, password=new_secret(), results_writer=USER
    )
    yield server
    stop_process(server.process, timeout=60)


@pytest.fixture
def results_prefix() -> str:
    """The test's own place in the bucket: its gateways read and write no other test's records."""
    return f"{BUCKET}/dask-gateway-{uuid.uuid4().hex[:8]}"


def gateway_environ(server: DaskGatewayServer, password: str, results_prefix: str) -> dict[str, str]:
    return environ_for(server.address, server.proxy_address, password, results_prefix)


def environ_for(address: str, proxy_address: str, password: str, results_prefix: str) -> dict[str, str]:
    return {**os.environ, "GATEWAY_RESULTS_URL": f"s3://{results_prefix}", **dask_gateway_login_environ(address, proxy_address, USER, password)}


def cluster_processes(server: DaskGatewayServer) -> list:
    """The schedulers and workers the server started (its proxy process stays)."""
    return [process for process in descendants(server.process.pid) if "proxy" not in " ".join(process.cmdline())]


def gateway_client(server: DaskGatewayServer) -> Gateway:
    return Gateway(server.address, proxy_address=server.proxy_address, auth=BasicAuth(USER, server.password))


def submitted(url: str, body: dict) -> dict:
    """A job posted to the gateway at ``url`` and waited for; its record, done."""
    answer = requests.post(f"{url}/jobs", json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    record = finished_job(lambda: requests.get(f"{url}/jobs/{body['job_id']}", timeout=10).json(), 120, body["job_id"])
    assert record["status"] == "done", record["error"]
    return record


def running_clusters(server: DaskGatewayServer) -> list:
    return gateway_client(server).list_clusters()


def test_jobs_run_on_a_dask_gateway_cluster_that_is_shut_down_with_the_service(
    dask_gateway_server: DaskGatewayServer, results_fs, results_prefix: str, tmp_path: Path
) -> None:
    served: RunningGateway = start_gunicorn_gateway(
        gateway_environ(dask_gateway_server, dask_gateway_server.password, results_prefix), log_file=tmp_path / "gateway.log"
    )
    try:
        ready = requests.get(f"{served.url}/readyz", timeout=10).json()
        assert ready["cluster"]["kind"] == "dask-gateway"
        assert ready["cluster"]["workers"] == 3
        assert len(running_clusters(dask_gateway_server)) == 1

        response = requests.get(f"{served.url}/submit_job/via-dask-gateway", timeout=120)
        assert response.status_code == 200, response.text
        source = assert_complete_result(results_fs, response.json(), results_prefix)
        # Both built-in apps and the installed example run on the Dask Gateway cluster's workers.
        coarse = submitted(served.url, {"app": "coarsen", "job_id": "coarse-via-dask-gateway", "parameters": {"source": "via-dask-gateway", "factor": 4}})
        expected = source.astype("float64").reshape(250, 4, 250, 4).mean(axis=(1, 3)).astype(source.dtype)
        np.testing.assert_array_equal(zarr.open_group(coarse["url"], mode="r")["data"][:], expected)
        assert_computed_by_the_app(submitted(served.url, {"app": "julia-set", "job_id": "julia-via-dask-gateway", "parameters": {"size": [300, 300]}}))
        dask_processes = cluster_processes(dask_gateway_server)
        assert len(dask_processes) >= 4, "a scheduler and three workers"
    finally:
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=90)

    wait_for(lambda: not running_clusters(dask_gateway_server), 30, "the gateway's cluster to be stopped")
    assert_all_gone(dask_processes, timeout=30)


def kill_with_sigkill(served: RunningGateway) -> None:
    """As the kubelet kills a pod past its grace period: no shutdown code runs, in gunicorn or the app."""
    processes = [psutil.Process(served.process.pid), *descendants(served.process.pid)]
    for process in processes:
        process.kill()
    assert_all_gone(processes, timeout=30)


def test_a_gateway_killed_with_sigkill_leaves_its_cluster_and_the_next_one_adopts_it(
    dask_gateway_server: DaskGatewayServer, results_fs, results_prefix: str, tmp_path: Path, http
) -> None:
    environ = gateway_environ(dask_gateway_server, dask_gateway_server.password, results_prefix)
    first = start_gunicorn_gateway(environ, log_file=tmp_path / "first.log")
    [left] = running_clusters(dask_gateway_server)
    warm_workers = {process.pid for process in cluster_processes(dask_gateway_server)}
    kill_with_sigkill(first)
    assert [cluster.name for cluster in running_clusters(dask_gateway_server)] == [left.name], "left behind"

    second = start_gunicorn_gateway(environ, log_file=tmp_path / "second.log")
    try:
        assert [cluster.name for cluster in running_clusters(dask_gateway_server)] == [left.name], "adopted, no new one"
        assert {process.pid for process in cluster_processes(dask_gateway_server)} == warm_workers, "the same warm workers"
        response = http.get(f"{second.url}/submit_job/on-the-adopted-cluster?shape=100,100", timeout=120)
        assert response.status_code == 200, response.text
        assert f"adopting Dask cluster {left.name}" in second.log()
    finally:
        stop_process(second.process, timeout=90)
    wait_for(lambda: not running_clusters(dask_gateway_server), 30, "the adopted cluster to be stopped with the gateway")


def test_other_unused_clusters_of_its_identity_are_stopped_and_one_a_gateway_uses_is_left(
    dask_gateway_server: DaskGatewayServer, results_prefix: str, tmp_path: Path, http
) -> None:
    same_identity = gateway_client(dask_gateway_server)

    def started() -> str:
        name = same_identity.submit()
        wait_for(lambda: name in {cluster.name for cluster in same_identity.list_clusters(status="running")}, 60, f"cluster {name} to run")
        return name

    older = started()
    newer = started()
    environ = gateway_environ(dask_gateway_server, dask_gateway_server.password, results_prefix)

    first = start_gunicorn_gateway(environ, log_file=tmp_path / "first.log")
    # A second replica, or a new pod while the old one stops: the first one's cluster has its client.
    # Its records elsewhere: on rclone's store (no conditional writes) a second replica of the same records waits as a standby.
    second = start_gunicorn_gateway({**environ, "GATEWAY_RESULTS_URL": f"{environ['GATEWAY_RESULTS_URL']}-second"}, log_file=tmp_path / "second.log")
    try:
        running = {cluster.name for cluster in running_clusters(dask_gateway_server)}
        assert older not in running and newer in running and len(running) == 2
        assert f"adopting Dask cluster {newer}" in first.log() and f"stopping Dask cluster {older}" in first.log()
        assert "adopting" not in second.log(), "the first gateway's cluster is left to it"
        assert http.get(f"{second.url}/readyz", timeout=30).json()["cluster"]["workers"] == 3
    finally:
        stop_process(second.process, timeout=90)
        stop_process(first.process, timeout=90)
    wait_for(lambda: not running_clusters(dask_gateway_server), 30, "every cluster to be stopped")


def test_a_refused_login_is_reported_by_readiness(dask_gateway_server: DaskGatewayServer, results_prefix: str, tmp_path: Path) -> None:
    wrong_password = new_secret()
    served = start_gunicorn_gateway(gateway_environ(dask_gateway_server, wrong_password, results_prefix), log_file=tmp_path / "gateway.log", ready_timeout=0)
    try:
        def refused() -> dict | None:
            response = requests.get(f"{served.url}/readyz", timeout=10)
            body = response.json()
            return body if response.status_code == 200 and "refused the login" in body["message"] else None

        body = wait_for(refused, 30, "readiness to report the refused login")
        assert "cluster" in body["failing"] and "DASK_GATEWAY__AUTH__TYPE" in body["message"]
        assert wrong_password not in body["message"]
        assert requests.get(f"{served.url}/healthz", timeout=10).status_code == 200
        waited = requests.get(f"{served.url}/submit_job/no-cluster", timeout=10)
        assert (waited.status_code, waited.json()["error"]["dependency"], waited.headers["Retry-After"]) == (503, "cluster", "10")
    finally:
        stop_process(served.process, timeout=60)
    assert "refused the login" in served.log()
    assert wrong_password not in served.log()


def lose_the_cluster(server: DaskGatewayServer, name: str, how: str) -> None:
    if how == "scheduler killed":
        [scheduler] = [process for process in cluster_processes(server) if "scheduler" in process.cmdline()]
        scheduler.kill()
    else:  # as Dask Gateway's idle timeout culls it
        gateway_client(server).stop_cluster(name)


@pytest.mark.parametrize("how", ["scheduler killed", "cluster stopped by Dask Gateway"])
def test_a_lost_cluster_is_reported_and_the_next_job_gets_a_new_one(
    dask_gateway_server: DaskGatewayServer, results_fs, results_prefix: str, tmp_path: Path, http, how: str
) -> None:
    served = start_gunicorn_gateway(gateway_environ(dask_gateway_server, dask_gateway_server.password, results_prefix), log_file=tmp_path / "gateway.log")
    try:
        [lost] = running_clusters(dask_gateway_server)

        lose_the_cluster(dask_gateway_server, lost.name, how)

        def reported() -> dict | None:
            response = http.get(f"{served.url}/readyz", timeout=30)
            return response.json() if response.status_code == 200 and "was lost" in response.text else None

        assert "starting a new one" in wait_for(reported, 60, "readiness to report the lost cluster")["message"]
        job_id = f"after-loss-{how.split()[0]}"
        response = http.get(f"{served.url}/submit_job/{job_id}", timeout=180)
        assert response.status_code == 200, response.text
        assert_complete_result(results_fs, response.json(), results_prefix)
        # Readiness is checked every second in the background; the bound only turns a failure into a report.
        served.wait_until_ready(60)
        assert [cluster.name for cluster in running_clusters(dask_gateway_server)] != [lost.name]
        assert "the Dask cluster was lost" in served.log()
    finally:
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=90)
    wait_for(lambda: not running_clusters(dask_gateway_server), 30, "every cluster of the gateway to be stopped")


def test_an_unreachable_dask_gateway_at_start_up_is_retried_with_backoff_until_it_answers(s3: LocalS3, results_prefix: str, tmp_path: Path, http) -> None:
    # The server's ports are held, bound but not listening (a connection is refused, as by no server), until it
    # starts: chosen and left free for the seconds the gateway retries, another process took one (seen in CI).
    held = [socket.socket() for _ in range(2)]
    for each in held:
        each.bind(("127.0.0.1", 0))
    api_port, proxy_port = (each.getsockname()[1] for each in held)
    password = new_secret()
    environ = environ_for(f"http://127.0.0.1:{api_port}", f"gateway://127.0.0.1:{proxy_port}", password, results_prefix)
    served = start_gunicorn_gateway(environ, log_file=tmp_path / "gateway.log", ready_timeout=0)
    server = None
    try:
        wait_for(lambda: "attempt 2 to start a dask-gateway cluster failed" in served.log(), 30, "a second attempt")
        assert "retrying in 2 s" in served.log() and "retrying in 4 s" in served.log()
        not_ready = http.get(f"{served.url}/readyz", timeout=30)
        assert not_ready.status_code == 200 and "cluster" in not_ready.json()["failing"] and "cannot reach Dask Gateway" in not_ready.json()["message"]
        assert served.process.poll() is None, "the service stays up"

        (tmp_path / "late").mkdir()
        for each in held:
            each.close()
        workers_secret = {"gateway-results-workers": s3.environ()}
        server = start_dask_gateway_server(tmp_path / "late", workers_secret, password, ports=(api_port, proxy_port), results_writer=USER)
        served.wait_until_ready(120)
        assert http.get(f"{served.url}/submit_job/once-the-gateway-answers?shape=100,100", timeout=120).status_code == 200
    finally:
        for each in held:
            each.close()
        stop_process(served.process, timeout=90)
        if server is not None:
            stop_process(server.process, timeout=60)


# An operator's own cluster option, passed on to the workers' container env beside what the shipped handler gives.
LABELLED_CLUSTERS = """
from dask_gateway_server.options import String

def labelled(options, user):
    config = results_writer_only(options, user)
    worker = dict(config.get("worker_extra_container_config") or get_property("gateway.backend.worker.extraContainerConfig") or {})
    worker["env"] = [*worker.get("env", []), {"name": "JOB_LABEL", "value": options.label}]
    return {**config, "worker_extra_container_config": worker}

c.Backend.cluster_options = Options(String("label", default="unlabelled"), handler=labelled)
"""


def test_the_cluster_options_setting_reaches_dask_gateway_and_a_wrong_one_is_named(s3: LocalS3, results_prefix: str, tmp_path: Path, http) -> None:
    (tmp_path / "dask-gateway").mkdir()
    server = start_dask_gateway_server(
        tmp_path / "dask-gateway", {"gateway-results-workers": s3.environ()}, password=new_secret(), results_writer=USER, operator_config=LABELLED_CLUSTERS
    )
    try:
        environ = {**gateway_environ(server, server.password, results_prefix), "GATEWAY_N_WORKERS": "1"}
        served = start_gunicorn_gateway({**environ, "GATEWAY_CLUSTER_OPTIONS": '{"label": "from-the-settings"}'}, log_file=tmp_path / "labelled.log")
        try:
            [cluster] = running_clusters(server)
            assert cluster.options["label"] == "from-the-settings"
            with gateway_client(server).connect(cluster.name, shutdown_on_close=False) as connected, connected.get_client() as client:
                # A lambda travels by value; os.environ.get would carry this process's environment along.
                assert set(client.run(lambda: os.environ.get("JOB_LABEL")).values()) == {"from-the-settings"}
        finally:
            stop_process(served.process, timeout=90)

        served = start_gunicorn_gateway({**environ, "GATEWAY_CLUSTER_OPTIONS": '{"lable": "typo"}'}, log_file=tmp_path / "typo.log", ready_timeout=0)
        try:
            def refused() -> str | None:
                answer = http.get(f"{served.url}/readyz", timeout=30)
                return answer.text if answer.status_code == 200 and "lable" in answer.text else None

            reason = wait_for(refused, 60, "the refusal")
            assert "GATEWAY_CLUSTER_OPTIONS: lable='typo' is refused" in reason and "the options it offers: label" in reason
            assert not running_clusters(server), "no cluster started with options other than asked"
        finally:
            stop_process(served.process, timeout=90)
    finally:
        stop_process(server.process, timeout=60)


def manifests_cluster_options() -> str:
    """GATEWAY_CLUSTER_OPTIONS as deploy_gateway.yaml sets it for the pod: the pod's own image."""
    (deployment,) = [doc for doc in yaml.safe_load_all((PROJECT / "deploy_gateway.yaml").read_text()) if doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (options,) = [item["value"] for item in container["env"] if item["name"] == "GATEWAY_CLUSTER_OPTIONS"]
    assert json.loads(options) == {"image": container["image"]}
    return options


def test_the_gateways_clusters_get_the_image_the_manifest_asks_for_and_another_repositorys_is_refused(
    dask_gateway_server: DaskGatewayServer, results_prefix: str, tmp_path: Path, http
) -> None:
    """The shipped values' options handler, in a real dask-gateway-server: the option reaches the cluster's settings
    (the local backend hands the pods' image setting to the workers as CLUSTER_IMAGE), and an image of another
    repository starts no cluster, readiness naming the refusal."""
    options = manifests_cluster_options()
    environ = {**gateway_environ(dask_gateway_server, dask_gateway_server.password, results_prefix), "GATEWAY_N_WORKERS": "1"}
    served = start_gunicorn_gateway({**environ, "GATEWAY_CLUSTER_OPTIONS": options}, log_file=tmp_path / "own-image.log")
    try:
        [cluster] = running_clusters(dask_gateway_server)
        assert cluster.options == json.loads(options)
        with gateway_client(dask_gateway_server).connect(cluster.name, shutdown_on_close=False) as connected, connected.get_client() as client:
            assert set(client.run(lambda: os.environ.get("CLUSTER_IMAGE")).values()) == {json.loads(options)["image"]}
    finally:
        stop_process(served.process, timeout=90)
    wait_for(lambda: not running_clusters(dask_gateway_server), 30, "the cluster to be stopped with the gateway")

    foreign = json.dumps({"image": "docker.io/library/python:3.11"})
    served = start_gunicorn_gateway({**environ, "GATEWAY_CLUSTER_OPTIONS": foreign}, log_file=tmp_path / "foreign.log", ready_timeout=0)
    try:
        reason = wait_for(lambda: "is refused" in (text := http.get(f"{served.url}/readyz", timeout=30).text) and text, 60, "the refusal")
        assert "docker.io/library/python:3.11" in reason and "registry.example.org/science-gateway:<tag>" in reason
        assert not running_clusters(dask_gateway_server), "no cluster started with another image"
    finally:
        stop_process(served.process, timeout=90)
