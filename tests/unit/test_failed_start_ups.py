"""A test server whose start-up fails leaves no process behind: each starter stops, by PID, what it started.

Each start-up here is given no time to come up (``timeout=0``, or no time for readiness), so it
fails as one that hangs would, after its process started. The processes are recognised by a
variable of this test's own in their environment, which the server's children inherit.
"""

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from devtools.gunicorn_gateway import start_gunicorn_gateway
from devtools.local_s3 import start_local_s3
from devtools.processes import free_port
from servers import HUB_VALUES, start_dask_gateway_server, start_jupyterhub, start_policed_s3

MARKER = "SCIENCE_GATEWAY_TEST_START_UP"


def left_running(marker: str) -> list[str]:
    """The processes still running with ``marker`` in their environment, as their command lines."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(process.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def hub(workdir: Path) -> object:
    values = yaml.safe_load(HUB_VALUES.read_text())
    services = dict.fromkeys(values["hub"]["services"], "not-used")
    urls = {name: f"http://127.0.0.1:{free_port()}" for name, service in values["hub"]["services"].items() if "url" in service}
    return start_jupyterhub(
        workdir, [], {}, services, "not-used", notebook_environment=dict.fromkeys(values["singleuser"]["extraEnv"], ""), service_urls=urls, timeout=0
    )


def gateway(workdir: Path) -> object:
    # Ready in no time: it fails once gunicorn listens, its Dask cluster starting.
    environ = {**os.environ, "GATEWAY_RESULTS_URL": str(workdir / "results"), "GATEWAY_N_WORKERS": "1"}
    return start_gunicorn_gateway(environ, log_file=workdir / "gateway.log", ready_timeout=0.001)


STARTERS: dict[str, Callable[[Path], object]] = {
    "rclone's S3": lambda workdir: start_local_s3(workdir, access_key="a", secret_key="b", timeout=0),
    "moto's S3": lambda workdir: start_policed_s3(workdir, "bucket", {}, timeout=0),
    "JupyterHub": hub,
    "dask-gateway-server": lambda workdir: start_dask_gateway_server(workdir, {}, password="not-used", timeout=0),
    "the gateway under gunicorn": gateway,
}


@pytest.mark.parametrize("server", list(STARTERS))
def test_a_server_whose_start_up_fails_is_stopped_with_what_it_started(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)

    with pytest.raises(TimeoutError):
        STARTERS[server](tmp_path)

    assert left_running(marker) == []
