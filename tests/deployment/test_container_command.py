"""The container's own command, parsed out of the Dockerfile, serves a job."""

import os
import shutil
import sys
from pathlib import Path

import requests

from artifacts import dockerfile_cmd
from conftest import BUCKET
from devtools.local_s3 import LocalS3
from devtools.processes import free_port, start_process, stop_process, wait_for_port
from helpers import assert_complete_result, wait_for
from servers import PROJECT

PREFIX = f"{BUCKET}/dockerfile-cmd"


def test_the_dockerfile_cmd_serves_a_job(s3: LocalS3, results_fs, tmp_path: Path) -> None:
    command = dockerfile_cmd()
    port = free_port()
    environ = {
        **os.environ,
        # The venv's executables, as the image's are on its PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GATEWAY_RESULTS_URL": f"s3://{PREFIX}",
        # gunicorn reads this after its config file: loopback and a free port instead of 0.0.0.0:8000.
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}",
    }
    assert shutil.which(command[0], path=environ["PATH"]), f"{command[0]} is not installed"
    process = start_process(command, env=environ, log_file=tmp_path / "container.log", cwd=PROJECT)
    try:
        wait_for_port(port, process, timeout=60)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{url}/readyz", timeout=10).json()["status"] == "ready", 120, "every dependency ready")
        response = requests.get(f"{url}/submit_job/from-the-dockerfile-cmd", timeout=120)
        assert response.status_code == 200, response.text
        assert_complete_result(results_fs, response.json(), PREFIX)
    finally:
        assert stop_process(process, timeout=90) == 0, (tmp_path / "container.log").read_text()[-3000:]
    assert (tmp_path / "container.log").read_text().count("Booting worker") == 1, "one worker process"
