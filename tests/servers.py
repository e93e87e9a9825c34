"""Real servers started as separate processes: dask-gateway-server with its local backend, JupyterHub, and moto's S3 with IAM."""

from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from devtools.gunicorn_gateway import PROJECT
from devtools.processes import free_port, on_a_free_port, start_process, stopped_if_start_up_fails, wait_for_port, wait_while_running
from helpers import new_secret

# configurable-http-proxy, which the Makefile installs from npm for the hub.
PROXY_COMMAND = PROJECT / ".venv" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"


@dataclass
class DaskGatewayServer:
    process: subprocess.Popen
    address: str
    proxy_address: str
    password: str | None
    workdir: Path
    # Containers of its schedulers and workers carry this label (with container_image).
    container_label: str


def dask_gateway_login_environ(address: str, proxy_address: str, user: str, password: str) -> dict[str, str]:
    """dask-gateway's own settings of a client of the server at these addresses that logs in as ``user`` with a password."""
    return {
        "DASK_GATEWAY__ADDRESS": address,
        "DASK_GATEWAY__PROXY_ADDRESS": proxy_address,
        "DASK_GATEWAY__AUTH__TYPE": "basic",
        "DASK_GATEWAY__AUTH__KWARGS__USERNAME": user,
        "DASK_GATEWAY__AUTH__KWARGS__PASSWORD": password,
    }


# The zero-to-jupyterhub values the product ships: the tests' hub is configured from them.
HUB_VALUES = PROJECT / "jupyterhub_values.yaml"
# What the test-only service may do: manage users' tokens, start their servers and use them.
TEST_ADMIN_SCOPES = ["admin:users", "tokens", "admin:servers", "access:servers"]


@dataclass
class JupyterHubServer:
    """A hub on loopback; ``admin_token`` (of a test-only service) manages users' tokens and servers."""

    process: subprocess.Popen
    api_url: str
    public_url: str
    admin_token: str
    service_tokens: dict[str, str]
    # The hub's own: its cookie secret and its proxy's token, for the audit of secrets.
    own_secrets: tuple[str, str]

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

    def create_users(self, users: list[str]) -> None:
        """Users the hub did not start with, as its admin page adds them."""
        self._api("POST", "/users", json={"usernames": users})

    def revoke(self, user: str, token_id: str) -> None:
        self._api("DELETE", f"/users/{user}/tokens/{token_id}")

    def start_server(self, user: str, timeout: float = 120) -> str:
        """Spawn ``user``'s notebook server, as the hub's home page does; its URL through the hub's proxy once it is ready."""
        self._api("POST", f"/users/{user}/server")

        def server() -> dict[str, Any]:
            return self._api("GET", f"/users/{user}").json()["servers"].get("", {})

        wait_while_running(lambda: server().get("ready", False), self.process, timeout, f"{user}'s server to be ready")
        return f"{self.public_url}{server()['url'].rstrip('/')}"

    def stop_server(self, user: str) -> None:
        self._api("DELETE", f"/users/{user}/server")


def zero_to_jupyterhub_config(values: dict[str, Any], service_tokens: dict[str, str], notebook_environment: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The traitlets config that zero-to-jupyterhub's jupyterhub_config.py makes of these values, as far as a local hub uses it.

    ``hub.config`` is taken as it stands; ``hub.services`` and ``hub.loadRoles``,
    dicts keyed by name so that values files merge, become lists of dicts with
    that ``name``. The chart generates each service's token: here it comes from
    ``service_tokens``. ``singleuser.extraEnv`` becomes the spawner's
    environment: a local process can read no Kubernetes Secret nor Service, so
    ``notebook_environment`` gives each of its variables, and only those, a value.
    """
    hub = values.get("hub", {})
    config = copy.deepcopy(hub.get("config", {}))
    jupyterhub = config.setdefault("JupyterHub", {})
    jupyterhub.setdefault("services", []).extend(
        {"name": name, **{key: value for key, value in service.items() if key != "apiToken"}, "api_token": service_tokens[name]}
        for name, service in hub.get("services", {}).items()
    )
    jupyterhub.setdefault("load_roles", []).extend({"name": name, **role} for name, role in hub.get("loadRoles", {}).items())
    variables = set(values.get("singleuser", {}).get("extraEnv", {}))
    if variables != set(notebook_environment):
        raise ValueError(f"singleuser.extraEnv sets {sorted(variables)}; the test gives {sorted(notebook_environment)}")
    config.setdefault("Spawner", {}).setdefault("environment", {}).update(notebook_environment)
    return config


def start_jupyterhub(
    workdir: Path,
    users: list[str],
    group_members: dict[str, list[str]],
    services: dict[str, str],
    admin_token: str,
    notebook_environment: dict[str, str],
    local_environment: dict[str, str] | None = None,
    oauth_redirects: dict[str, str] | None = None,
    service_urls: dict[str, str] | None = None,
    public_port: int | None = None,
    values: dict[str, Any] | None = None,
    timeout: float = 60,
) -> JupyterHubServer:
    """JupyterHub configured from jupyterhub_values.yaml (or ``values``), on loopback, with its proxy.

    What the values do not say, because zero-to-jupyterhub's own config or the
    cluster does it, is set here for loopback: the dummy authenticator with
    ``users``, members of the values' groups (``group_members``), each service's
    token (``services``), and a local process spawner that runs
    ``jupyterhub-singleuser`` with ``notebook_environment`` for the values'
    ``singleuser.extraEnv``, and ``local_environment`` for what the local
    stand-ins need beyond it. A test-only service with ``admin_token`` manages
    users' tokens and servers. A service with an ``oauth_redirects`` URL lets
    browsers log in to it through the hub. A service the values give a ``url``
    (a Kubernetes Service's) is given its loopback stand-in in ``service_urls``,
    which the hub's proxy then serves at ``/services/<name>/``; the hub waits
    no more than a second at its start for one that does not answer yet.
    ``public_port`` is the proxy's (the hub's public URL), free unless given.
    """
    hub_port, proxy_api_port = free_port(), free_port()
    proxy_port = public_port or free_port()
    bin_dir = Path(sys.executable).parent
    values = yaml.safe_load(HUB_VALUES.read_text()) if values is None else values
    config = zero_to_jupyterhub_config(values, services, notebook_environment)
    hub = config["JupyterHub"]
    for service in hub["services"]:
        if service["name"] in (oauth_redirects or {}):
            service.update(oauth_redirect_uri=oauth_redirects[service["name"]], oauth_no_confirm=True)
        if "url" in service:
            if service["name"] not in (service_urls or {}):
                raise ValueError(f"the values give service {service['name']} the url {service['url']}; give the test's in service_urls")
            service.update(url=service_urls[service["name"]], timeout=1)
    hub["services"].append({"name": "test-admin", "api_token": admin_token})
    hub["load_roles"].append({"name": "test-admin", "services": ["test-admin"], "scopes": TEST_ADMIN_SCOPES})
    for group, members in group_members.items():
        hub["load_groups"][group]["users"] = members
    hub.update(
        ip="127.0.0.1", port=proxy_port, hub_ip="127.0.0.1", hub_port=hub_port, authenticator_class="dummy",
        spawner_class="jupyterhub.spawner.SimpleLocalProcessSpawner",
        db_url=f"sqlite:///{workdir / 'jupyterhub.sqlite'}",
        cookie_secret_file=str(workdir / "cookie_secret"), pid_file=str(workdir / "jupyterhub.pid"),
    )  # fmt: skip
    config.setdefault("Authenticator", {})["allowed_users"] = users
    # Made here rather than by the hub, so that the audit of secrets knows them.
    cookie_secret, proxy_token = secrets.token_hex(32), new_secret()
    with open(os.open(workdir / "cookie_secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as secret_file:
        secret_file.write(cookie_secret)
    config["ConfigurableHTTPProxy"] = {"api_url": f"http://127.0.0.1:{proxy_api_port}", "command": [str(PROXY_COMMAND)], "auth_token": proxy_token}
    config["SimpleLocalProcessSpawner"] = {"home_dir_template": str(workdir / "home" / "{username}")}
    spawner = config["Spawner"]
    # A container image puts its Python on PATH: here the project's venv, whose kernel spec runs `python`.
    spawner["environment"].update(local_environment or {}, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spawner.update(
        cmd=[str(bin_dir / "jupyterhub-singleuser")],
        # As root here, which a notebook server refuses unless told.
        args=["--allow-root"] if os.geteuid() == 0 else [],
        # This machine's OpenBLAS settings, which numpy in the kernel needs as the tests' own process does.
        env_keep=["JUPYTERHUB_SINGLEUSER_APP", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"],
        start_timeout=120, http_timeout=120,
    )  # fmt: skip
    config_file = workdir / "jupyterhub_config.py"
    config_file.write_text(
        "import json\n"
        f"for section, settings in json.loads({json.dumps(config)!r}).items():\n"
        "    c[section].update(settings)\n"
    )
    command = [str(bin_dir / "jupyterhub"), "-f", str(config_file)]
    # The hub needs none of the tests' secrets.
    hub_env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JUPYTERHUB_"))}
    process = start_process(command, env=hub_env, log_file=workdir / "jupyterhub.log", cwd=workdir)
    with stopped_if_start_up_fails(process):
        wait_for_port(hub_port, process, timeout)
        server = JupyterHubServer(
            process, f"http://127.0.0.1:{hub_port}/hub/api", f"http://127.0.0.1:{proxy_port}", admin_token, services, (cookie_secret, proxy_token)
        )
        wait_while_running(lambda: _answers(server), process, timeout, "the hub's API")
    return server


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


@dataclass
class PolicedS3:
    """moto's S3 and IAM, enforcing IAM policies: one access key per policy it was given."""

    process: subprocess.Popen
    endpoint_url: str
    keys: dict[str, tuple[str, str]]

    def environ(self, policy: str) -> dict[str, str]:
        """The standard AWS variables of the key that ``policy`` governs."""
        access_key, secret_key = self.keys[policy]
        return {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def start_policed_s3(workdir: Path, bucket: str, policies: dict[str, dict[str, Any]], timeout: float = 60) -> PolicedS3:
    """moto's server with ``bucket`` and, for each of ``policies``, an IAM user with that policy and an access key.

    moto checks keys and policies as AWS does once its first N requests, the
    set-up here, are done (INITIAL_NO_AUTH_ACTION_COUNT).
    """
    import boto3

    port = free_port()
    set_up_requests = 1 + 3 * len(policies)
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    env = {**{name: value for name, value in os.environ.items() if not name.startswith("AWS_")}, "INITIAL_NO_AUTH_ACTION_COUNT": str(set_up_requests)}
    process = start_process(command, env=env, log_file=workdir / "moto.log", cwd=workdir)
    endpoint = f"http://127.0.0.1:{port}"
    keys = {}
    with stopped_if_start_up_fails(process):
        wait_for_port(port, process, timeout)
        # moto counts these requests, not checking their keys.
        anyone = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "set-up-only", "aws_secret_access_key": "set-up-only"}
        boto3.client("s3", **anyone).create_bucket(Bucket=bucket)
        iam = boto3.client("iam", **anyone)
        for name, policy in policies.items():
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
    return PolicedS3(process, endpoint, keys)


# The dask-gateway chart's values the product ships: the tests' servers run their extraConfig.
DASK_GATEWAY_VALUES = PROJECT / "dask_gateway_config.yaml"


def start_dask_gateway_server(
    workdir: Path,
    kubernetes_secrets: dict[str, dict[str, str]],
    password: str | None = None,
    timeout: float = 60,
    ports: tuple[int, int] | None = None,
    authentication: str | None = None,
    results_writer: str | None = None,
    container_image: str | None = None,
    operator_config: str = "",
) -> DaskGatewayServer:
    """dask-gateway-server with its local backend, on loopback, configured by dask_gateway_config.yaml's extraConfig.

    Authentication is simple (``password``) or ``authentication`` config lines.
    The values' ``extraConfig`` runs as the chart runs it, with ``get_property``
    over the values, so its options handler decides what each cluster's
    workers get. A worker gets the chart's ``worker.extraContainerConfig``
    and what the handler adds: its ``env``, and for each ``envFrom`` Secret
    the variables of that name in ``kubernetes_secrets``, as the kubelet
    mounts them into a pod. Nothing else of the tests' environment reaches a
    worker but PYTHONPATH. ``results_writer`` names the one identity whose
    workers get the write Secret, for a password login, which has no hub
    service names. The logs of each cluster's scheduler and workers are kept
    in ``workdir/cluster-logs``. ``ports`` (API, scheduler proxy) are free
    ones unless given. With ``container_image``, schedulers and workers run in
    containers of that image (devtools/container_process.py), labelled with
    the server's ``container_label``; else from this venv. ``operator_config``
    comes last, as an operator's own configuration would.
    """
    if ports is None:
        # Both ports again if a process takes either between its choice and the server's start.
        return on_a_free_port(
            lambda free: start_dask_gateway_server(
                workdir, kubernetes_secrets, password, timeout, (free, free_port()), authentication, results_writer, container_image, operator_config
            )
        )  # fmt: skip
    api_port, proxy_port = ports
    container_label = f"dask-gateway-test-{api_port}"
    if container_image:
        dask = [sys.executable, str(PROJECT / "devtools" / "container_process.py"), container_image, container_label, "dask"]
        # The image has the job code on its own PYTHONPATH.
        environment = {}
    else:
        dask = [str(Path(sys.executable).parent / "dask")]
        environment = {"PYTHONPATH": str(PROJECT)}
    gateway_values = yaml.safe_load(DASK_GATEWAY_VALUES.read_text())["gateway"]
    extra_config = gateway_values.pop("extraConfig")
    config = workdir / "dask_gateway_config.py"
    config.write_text(
        textwrap.dedent(
            f"""
            import json, os, shutil
            from traitlets import Dict, Unicode
            from dask_gateway_server.backends.local import LocalClusterConfig, UnsafeLocalBackend

            _PROPERTIES = json.loads({json.dumps({"gateway": gateway_values})!r})
            KUBERNETES_SECRETS = {kubernetes_secrets!r}

            def get_property(key, default=None):
                # As the chart defines it for extraConfig.
                value = _PROPERTIES
                for part in key.split("."):
                    if not isinstance(value, dict) or part not in value:
                        return default
                    value = value[part]
                return value

            class ContainerClusterConfig(LocalClusterConfig):
                # The Kubernetes backend's settings that the chart's values and the options handler set. Of
                # these, processes take the worker container's env and envFrom alone; the rest are a pod's.
                worker_extra_container_config = Dict(config=True)
                worker_extra_pod_config = Dict(config=True)
                worker_extra_pod_labels = Dict(config=True)
                scheduler_extra_container_config = Dict(config=True)
                scheduler_extra_pod_config = Dict(config=True)
                scheduler_extra_pod_labels = Dict(config=True)
                # The pods' image, which the gateway's clusters choose through the option `image`: recorded
                # here (processes run from this venv, or from the server's container_image), and given to
                # the workers as CLUSTER_IMAGE so that a test sees what a pod would run.
                image = Unicode("", config=True)

            class LocalPodBackend(UnsafeLocalBackend):
                cluster_config_class = ContainerClusterConfig

                def get_worker_env(self, cluster):
                    # What the kubelet makes of the worker container's env and envFrom.
                    env = super().get_worker_env(cluster)
                    container = cluster.config.worker_extra_container_config
                    for source in container.get("envFrom", []):
                        env.update(KUBERNETES_SECRETS[source["secretRef"]["name"]])
                    env.update({{item["name"]: item["value"] for item in container.get("env", [])}})
                    env["CLUSTER_IMAGE"] = cluster.config.image
                    return env

                # A stopped cluster's directory goes, with the logs of its scheduler and
                # workers; they are kept for the tests' audit of secrets.
                def cleanup_working_directory(self, workdir):
                    logs = self.get_logs_directory(workdir)
                    if os.path.isdir(logs):
                        shutil.copytree(logs, os.path.join({str(workdir / 'cluster-logs')!r}, os.path.basename(workdir)))
                    super().cleanup_working_directory(workdir)

            c.DaskGateway.backend_class = LocalPodBackend
            c.ContainerClusterConfig.worker_extra_container_config = get_property("gateway.backend.worker.extraContainerConfig", {{}})
            """
        )
        + "".join(f"\n# From gateway.extraConfig.{name}\n{extra_config[name]}" for name in sorted(extra_config))
        + textwrap.dedent(
            f"""
            # Loopback stand-ins for what the chart's pods have.
            c.Proxy.address = "127.0.0.1:{api_port}"
            c.Proxy.tcp_address = "127.0.0.1:{proxy_port}"
            c.LocalBackend.clusters_directory = {str(workdir / 'clusters')!r}
            c.ClusterConfig.scheduler_cmd = {[*dask, "scheduler"]!r}
            c.ClusterConfig.worker_cmd = {[*dask, "worker", "--host", "127.0.0.1"]!r}
            c.ClusterConfig.worker_threads = 1
            c.ClusterConfig.environment = {environment!r}
            """
        )
        + (f"RESULTS_WRITER = {results_writer!r}\n" if results_writer else "")
        + textwrap.dedent(authentication or simple_authentication(password or ""))
        + textwrap.dedent(operator_config)
    )
    server_env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    command = [str(Path(sys.executable).parent / "dask-gateway-server"), "-f", str(config)]
    process = start_process(command, env=server_env, log_file=workdir / "dask-gateway-server.log", cwd=workdir)
    with stopped_if_start_up_fails(process):
        wait_for_port(api_port, process, timeout)
    return DaskGatewayServer(
        process, f"http://127.0.0.1:{api_port}", f"gateway://127.0.0.1:{proxy_port}", password, workdir, container_label
    )
