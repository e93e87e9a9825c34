"""The gateway under gunicorn with the project's ``gunicorn.conf.py``, as the container runs it, on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import free_port, on_a_free_port, start_process, stopped_if_start_up_fails, wait_for_port, wait_while_running

PROJECT = Path(__file__).resolve().parent.parent


@dataclass
class RunningGateway:
    process: subprocess.Popen
    url: str
    log_file: Path | None
    # Where the kubelet's probes go (GATEWAY_PROBE_ADDRESS).
    probe_url: str

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file else ""

    def wait_until_ready(self, timeout: float) -> None:
        """Return once ``/readyz`` says every dependency is ready (``status`` ``ready``, not only that the
        process serves, which it answers 200 from its start); fail if gunicorn exits first."""

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as answer:
                    return json.load(answer).get("status") == "ready"
            except (urllib.error.URLError, OSError, ValueError):
                return False

        wait_while_running(ready, self.process, timeout, f"readiness at {self.url}/readyz")


def start_gunicorn_gateway(
    environ: dict[str, str], *, port: int | None = None, log_file: Path | None = None, ready_timeout: float = 180
) -> RunningGateway:
    """Start gunicorn and return once it listens and, unless ``ready_timeout`` is 0, is ready.

    Without ``port``, on a free one (another if a process takes it meanwhile).
    """
    if port is None:
        return on_a_free_port(lambda free: start_gunicorn_gateway(environ, port=free, log_file=log_file, ready_timeout=ready_timeout))
    probe_address = environ.get("GATEWAY_PROBE_ADDRESS") or f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "gateway:app"]
    process = start_process(command, env={**environ, "GATEWAY_PROBE_ADDRESS": probe_address}, log_file=log_file, cwd=PROJECT)
    gateway = RunningGateway(process, f"http://127.0.0.1:{port}", log_file, f"http://{probe_address}")
    # Stopped first, not killed: gunicorn then stops its worker and the worker's Dask cluster.
    with stopped_if_start_up_fails(process):
        wait_for_port(port, process, timeout=60)
        if ready_timeout:
            gateway.wait_until_ready(ready_timeout)
    return gateway
