"""`make run` as a newcomer uses it: start, run the printed curl line, open the result, Ctrl-C."""

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import xarray as xr

from devtools.processes import free_port
from helpers import assert_all_gone, wait_for
from servers import PROJECT


def test_the_printed_curl_line_writes_an_array_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    gateway_port, s3_port = free_port(), free_port()
    command = [sys.executable, "-m", "devtools.run_local", "--port", str(gateway_port), "--s3-port", str(s3_port), "--data-dir", str(tmp_path / "data")]
    environ = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "GATEWAY_"))}
    with open(log, "wb") as output:
        # A session of its own, so that Ctrl-C can be sent to all of it as a terminal would.
        run = subprocess.Popen(command, cwd=PROJECT, env=environ, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        printed = wait_for(lambda: "Ctrl-C stops" in log.read_text() and log.read_text(), 180, "make run to print its lines")
        curl_line = re.search(r"Try:\s+(curl \S+)", printed).group(1)
        exports = re.search(r"S3 access:\s+export (.+)", printed).group(1)

        answer = subprocess.run(shlex.split(curl_line), capture_output=True, text=True, check=True).stdout
        assert '"status":"done"' in answer

        reader_env = dict(pair.split("=", 1) for pair in exports.split())
        assert reader_env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{s3_port}"
        # Explicit options: this process's cached S3 filesystems point at another server.
        storage_options = {
            "key": reader_env["AWS_ACCESS_KEY_ID"],
            "secret": reader_env["AWS_SECRET_ACCESS_KEY"],
            "endpoint_url": reader_env["AWS_ENDPOINT_URL"],
            "skip_instance_cache": True,
        }
        dataset = xr.open_zarr("s3://gateway-results/my-first-job", storage_options=storage_options)
        assert dataset["data"].shape == (1000, 1000)
        assert (tmp_path / "data" / "gateway-results" / "my-first-job" / "zarr.json").exists()

        processes = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=90)
        assert_all_gone(processes, timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
