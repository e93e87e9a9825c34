"""The production cluster path: the gateway obtains its cluster from a real dask-gateway-server.

The S3 credentials reach the Dask workers only through the Dask Gateway cluster
environment (as the Helm chart mounts the Secret into worker pods): the
dask-gateway-server process itself runs without them.
"""

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dask_gateway import BasicAuth, Gateway

from conftest import BUCKET
from devtools.local_s3 import LocalS3
from devtools.processes import stop_process
from helpers import assert_all_gone, assert_complete_result, descendants, wait_for
from devtools.gunicorn_gateway import RunningGateway, start_gunicorn_gateway
from servers import DaskGatewayServer, start_dask_gateway_server

USER = "scientist"


@pytest.fixture(scope="module")
def dask_gateway_server(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskGatewayServer]:
    server = start_dask_gateway_server(tmp_path_factory.mktemp("dask-gateway"), s3.environ(), password="gateway-pw-0")
    yield server
    stop_process(server.process, timeout=60)


def gateway_environ(server: DaskGatewayServer, password: str) -> dict[str, str]:
    return {
        **os.environ,
        "GATEWAY_RESULTS_URL": f"s3://{BUCKET}",
        "DASK_GATEWAY__ADDRESS": server.address,
        "DASK_GATEWAY__PROXY_ADDRESS": server.proxy_address,
        "DASK_GATEWAY__AUTH__TYPE": "basic",
        "DASK_GATEWAY__AUTH__KWARGS__USERNAME": USER,
        "DASK_GATEWAY__AUTH__KWARGS__PASSWORD": password,
    }


def cluster_processes(server: DaskGatewayServer) -> list:
    """The schedulers and workers the server started (its proxy process stays)."""
    return [process for process in descendants(server.process.pid) if "proxy" not in " ".join(process.cmdline())]


def running_clusters(server: DaskGatewayServer) -> list:
    gateway = Gateway(server.address, proxy_address=server.proxy_address, auth=BasicAuth(USER, server.password))
    return gateway.list_clusters()


def test_jobs_run_on_a_dask_gateway_cluster_that_is_shut_down_with_the_service(
    dask_gateway_server: DaskGatewayServer, results_fs, tmp_path: Path
) -> None:
    served: RunningGateway = start_gunicorn_gateway(
        gateway_environ(dask_gateway_server, dask_gateway_server.password), log_file=tmp_path / "gateway.log"
    )
    try:
        ready = requests.get(f"{served.url}/readyz", timeout=10).json()
        assert ready["cluster"]["kind"] == "dask-gateway"
        assert ready["cluster"]["workers"] == 3
        assert len(running_clusters(dask_gateway_server)) == 1

        response = requests.get(f"{served.url}/submit_job/via-dask-gateway", timeout=120)
        assert response.status_code == 200, response.text
        assert_complete_result(results_fs, response.json(), BUCKET)
        dask_processes = cluster_processes(dask_gateway_server)
        assert len(dask_processes) >= 4, "a scheduler and three workers"
    finally:
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=90)

    wait_for(lambda: not running_clusters(dask_gateway_server), 30, "the gateway's cluster to be stopped")
    assert_all_gone(dask_processes, timeout=30)


def test_a_refused_login_is_reported_by_readiness(dask_gateway_server: DaskGatewayServer, tmp_path: Path) -> None:
    served = start_gunicorn_gateway(gateway_environ(dask_gateway_server, "wrong-password"), log_file=tmp_path / "gateway.log", ready_timeout=0)
    try:
        def refused() -> dict | None:
            response = requests.get(f"{served.url}/readyz", timeout=10)
            body = response.json()
            return body if response.status_code == 503 and "refused the login" in body["error"]["message"] else None

        body = wait_for(refused, 30, "readiness to report the refused login")
        assert "DASK_GATEWAY__AUTH__TYPE" in body["error"]["message"]
        assert "wrong-password" not in body["error"]["message"]
        assert requests.get(f"{served.url}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{served.url}/submit_job/no-cluster", timeout=10).status_code == 503
    finally:
        stop_process(served.process, timeout=60)
    assert "refused the login" in served.log()
    assert "wrong-password" not in served.log()
