"""Real servers started as separate processes: dask-gateway-server with its local backend, and JupyterHub."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import requests

from devtools.gunicorn_gateway import PROJECT
from devtools.processes import free_port, start_process, wait_for_port, wait_while_running


# configurable-http-proxy, which the Makefile installs from npm for the hub.
PROXY_COMMAND = PROJECT / ".venv" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"


@dataclass
class DaskGatewayServer:
    process: subprocess.Popen
    address: str
    proxy_address: str
    password: str | None


@dataclass
class JupyterHubServer:
    """A hub on loopback; ``admin_token`` (of a test-only service) creates and revokes users' tokens."""

    process: subprocess.Popen
    api_url: str
    public_url: str
    admin_token: str
    service_tokens: dict[str, str]

    def _api(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(
            method, f"{self.api_url}{path}", headers={"Authorization": f"token {self.admin_token}"}, timeout=30, **kwargs
        )
        response.raise_for_status()
        return response

    def new_token(self, user: str, scopes: list[str] | None = None) -> tuple[str, str]:
        """A new API token of ``user`` (with all of the user's permissions unless ``scopes``): the token and its id."""
        body = {"note": "science gateway tests", **({"scopes": scopes} if scopes is not None else {})}
        created = self._api("POST", f"/users/{user}/tokens", json=body).json()
        return created["token"], created["id"]

    def revoke(self, user: str, token_id: str) -> None:
        self._api("DELETE", f"/users/{user}/tokens/{token_id}")


def start_jupyterhub(
    workdir: Path,
    users: list[str],
    groups: dict[str, list[str]],
    services: dict[str, str],
    admin_token: str,
    oauth_redirects: dict[str, str] | None = None,
    timeout: float = 60,
) -> JupyterHubServer:
    """JupyterHub with its dummy authenticator and configurable-http-proxy, on loopback.

    ``services`` (name: API token) are registered with the hub, as a deployment
    registers the science gateway and Dask Gateway: every user may use the
    science gateway, and the science gateway may use Dask Gateway. A test-only
    service with ``admin_token`` manages users' tokens. A service with an
    ``oauth_redirects`` URL lets browsers log in to it through the hub.
    """
    hub_port, proxy_port, proxy_api_port = free_port(), free_port(), free_port()
    roles = [
        {"name": "user", "scopes": ["self", "access:services!service=science-gateway"]},
        {"name": "science-gateway", "services": ["science-gateway"], "scopes": ["access:services!service=dask-gateway"]},
        {"name": "test-admin", "services": ["test-admin"], "scopes": ["admin:users", "tokens"]},
    ]
    redirects = oauth_redirects or {}
    registered = [
        {"name": name, "api_token": token, **({"oauth_redirect_uri": redirects[name], "oauth_no_confirm": True} if name in redirects else {})}
        for name, token in {**services, "test-admin": admin_token}.items()
    ]
    config = workdir / "jupyterhub_config.py"
    config.write_text(
        textwrap.dedent(
            f"""
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {proxy_port}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
            c.ConfigurableHTTPProxy.command = [{str(PROXY_COMMAND)!r}]
            c.JupyterHub.authenticator_class = "dummy"
            c.Authenticator.allowed_users = {set(users)!r}
            c.JupyterHub.load_groups = {({name: {"users": members} for name, members in groups.items()})!r}
            c.JupyterHub.services = {registered!r}
            c.JupyterHub.load_roles = {roles!r}
            c.JupyterHub.db_url = "sqlite:///{workdir / 'jupyterhub.sqlite'}"
            c.JupyterHub.cookie_secret_file = {str(workdir / 'cookie_secret')!r}
            c.JupyterHub.pid_file = {str(workdir / 'jupyterhub.pid')!r}
            """
        )
    )
    command = [str(Path(sys.executable).parent / "jupyterhub"), "-f", str(config)]
    # The hub needs none of the tests' secrets.
    hub_env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JUPYTERHUB_"))}
    process = start_process(command, env=hub_env, log_file=workdir / "jupyterhub.log", cwd=workdir)
    wait_for_port(hub_port, process, timeout)
    hub = JupyterHubServer(process, f"http://127.0.0.1:{hub_port}/hub/api", f"http://127.0.0.1:{proxy_port}", admin_token, services)
    wait_while_running(lambda: _answers(hub), process, timeout, "the hub's API")
    return hub


def _answers(hub: JupyterHubServer) -> bool:
    try:
        return requests.get(f"{hub.api_url}/", timeout=5).ok
    except requests.RequestException:
        return False


def simple_authentication(password: str) -> str:
    return f"""
            c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
            c.SimpleAuthenticator.password = {password!r}
    """


def jupyterhub_authentication(hub: JupyterHubServer, service_name: str) -> str:
    """As the dask-gateway Helm chart configures it with JupyterHub: a hub service whose access scope is required."""
    return f"""
            c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
            c.JupyterHubAuthenticator.jupyterhub_api_url = {hub.api_url!r}
            c.JupyterHubAuthenticator.jupyterhub_api_token = {hub.service_tokens[service_name]!r}
            c.JupyterHubAuthenticator.jupyterhub_service_name = {service_name!r}
    """


def start_dask_gateway_server(
    workdir: Path,
    cluster_environment: dict[str, str],
    password: str | None = None,
    timeout: float = 60,
    ports: tuple[int, int] | None = None,
    authentication: str | None = None,
) -> DaskGatewayServer:
    """dask-gateway-server with its local backend, on loopback: simple (password) auth, or ``authentication`` config lines.

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
            c.Proxy.address = "127.0.0.1:{api_port}"
            c.Proxy.tcp_address = "127.0.0.1:{proxy_port}"
            c.LocalBackend.clusters_directory = {str(workdir / 'clusters')!r}
            c.ClusterConfig.scheduler_cmd = [{str(bin_dir / 'dask')!r}, "scheduler"]
            c.ClusterConfig.worker_cmd = [{str(bin_dir / 'dask')!r}, "worker", "--host", "127.0.0.1"]
            c.ClusterConfig.worker_threads = 1
            c.ClusterConfig.environment = {environment!r}
            """
        )
        + textwrap.dedent(authentication or simple_authentication(password or ""))
    )
    server_env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    command = [str(bin_dir / "dask-gateway-server"), "-f", str(config)]
    process = start_process(command, env=server_env, log_file=workdir / "dask-gateway-server.log", cwd=workdir)
    wait_for_port(api_port, process, timeout)
    return DaskGatewayServer(process, f"http://127.0.0.1:{api_port}", f"gateway://127.0.0.1:{proxy_port}", password)
