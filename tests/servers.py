"""A real dask-gateway-server, started as a separate process with its local backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from devtools.gunicorn_gateway import PROJECT
from devtools.processes import free_port, start_process, wait_for_port


@dataclass
class DaskGatewayServer:
    process: subprocess.Popen
    address: str
    proxy_address: str
    password: str


def start_dask_gateway_server(
    workdir: Path,
    cluster_environment: dict[str, str],
    password: str,
    timeout: float = 60,
    ports: tuple[int, int] | None = None,
) -> DaskGatewayServer:
    """dask-gateway-server with its local backend and simple (password) auth, on loopback.

    The logs of each cluster's scheduler and workers are kept in ``workdir/cluster-logs``.

    Workers get only ``cluster_environment`` (and PYTHONPATH), the way the
    Helm chart's worker pods get only the Secret that is mounted into them.
    ``ports`` (API, scheduler proxy) are free ones unless given.
    """
    api_port, proxy_port = ports or (free_port(), free_port())
    bin_dir = Path(sys.executable).parent
    environment = {**cluster_environment, "PYTHONPATH": str(PROJECT)}
    config = workdir / "dask_gateway_config.py"
    config.write_text(
        textwrap.dedent(
            f"""
            import os, shutil
            from dask_gateway_server.backends.local import UnsafeLocalBackend

            class LogKeepingBackend(UnsafeLocalBackend):
                # A stopped cluster's directory goes, with the logs of its scheduler and
                # workers; they are kept for the tests' audit of secrets.
                def cleanup_working_directory(self, workdir):
                    logs = self.get_logs_directory(workdir)
                    if os.path.isdir(logs):
                        shutil.copytree(logs, os.path.join({str(workdir / 'cluster-logs')!r}, os.path.basename(workdir)))
                    super().cleanup_working_directory(workdir)

            c.DaskGateway.backend_class = LogKeepingBackend
            c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
            c.SimpleAuthenticator.password = {password!r}
            c.Proxy.address = "127.0.0.1:{api_port}"
            c.Proxy.tcp_address = "127.0.0.1:{proxy_port}"
            c.LocalBackend.clusters_directory = {str(workdir / 'clusters')!r}
            c.ClusterConfig.scheduler_cmd = [{str(bin_dir / 'dask')!r}, "scheduler"]
            c.ClusterConfig.worker_cmd = [{str(bin_dir / 'dask')!r}, "worker", "--host", "127.0.0.1"]
            c.ClusterConfig.worker_threads = 1
            c.ClusterConfig.environment = {environment!r}
            """
        )
    )
    server_env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    command = [str(bin_dir / "dask-gateway-server"), "-f", str(config)]
    process = start_process(command, env=server_env, log_file=workdir / "dask-gateway-server.log", cwd=workdir)
    wait_for_port(api_port, process, timeout)
    return DaskGatewayServer(process, f"http://127.0.0.1:{api_port}", f"gateway://127.0.0.1:{proxy_port}", password)
