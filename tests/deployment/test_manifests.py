"""deploy_gateway.yaml, read through the kubernetes client's typed models, agrees with the rest."""

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dask_gateway_server.models import User
from flask import Flask

from artifacts import disruption_budget, dockerfile_cmd, gunicorn_settings, helm_values, jupyterhub_values, manifests, options_handler
from devtools.container_engine import DEBIAN_BASE_IMAGE
from devtools.processes import free_port
from gateway import probe_answer, services
from helpers import running_app, wait_for
from science_gateway.chunk_writes import STOP_TIMEOUT
from science_gateway.probe_server import ProbeServer
from science_gateway.settings import Settings, load_settings
from servers import PROJECT

SECRET = "awsconfig"
WORKERS_SECRET = "gateway-results-workers"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    environ = {"DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}", "GATEWAY_RESULTS_URL": str(tmp_path_factory.mktemp("r"))}
    with running_app(environ) as app:
        yield app


def container():
    deployment = manifests().deployment
    (gateway,) = deployment.spec.template.spec.containers
    return gateway


def test_two_replicas_rolled_with_none_unavailable() -> None:
    """An upgrade starts a new pod, and waits for it to be ready, before it stops an old one."""
    deployment = manifests().deployment
    assert deployment.spec.replicas == 2
    strategy = deployment.spec.strategy
    assert strategy.type == "RollingUpdate"
    assert (strategy.rolling_update.max_unavailable, strategy.rolling_update.max_surge) == (0, 1)


def test_the_disruption_budget_keeps_one_of_the_gateways_pods() -> None:
    deployment = manifests().deployment
    budget = disruption_budget()
    assert budget.metadata.name == deployment.metadata.name
    assert budget.spec.min_available == 1 < deployment.spec.replicas and budget.spec.max_unavailable is None
    selector = budget.spec.selector
    assert not selector.match_expressions
    assert selector.match_labels == deployment.spec.selector.match_labels, "the Deployment's pods, no more"
    assert selector.match_labels.items() <= deployment.spec.template.metadata.labels.items()


def test_the_replicas_spread_over_nodes_and_still_start_on_one() -> None:
    pod = manifests().deployment.spec.template
    (constraint,) = pod.spec.topology_spread_constraints
    assert constraint.topology_key == "kubernetes.io/hostname" and constraint.max_skew == 1
    assert constraint.when_unsatisfiable == "ScheduleAnyway", "a one-node cluster still runs both"
    assert constraint.label_selector.match_labels.items() <= pod.metadata.labels.items()
    assert constraint.match_label_keys == ["pod-template-hash"], "one version's pods spread among themselves"
    assert pod.spec.affinity is None


def test_each_replica_is_named_after_its_pod() -> None:
    (replica_id,) = [variable for variable in container().env if variable.name == "GATEWAY_REPLICA_ID"]
    assert replica_id.value is None and replica_id.value_from.field_ref.field_path == "metadata.name"


def test_the_service_selects_the_pods_and_ports_agree() -> None:
    deployment, service, _ = manifests()
    assert service.metadata.name == "gateway-svc"
    labels = deployment.spec.template.metadata.labels
    assert service.spec.selector and service.spec.selector.items() <= labels.items()
    assert deployment.spec.selector.match_labels.items() <= labels.items()
    (port,) = service.spec.ports
    [container_port] = [port for port in container().ports if port.name == "http"]
    assert port.port == 80
    assert port.target_port in (container_port.name, container_port.container_port)
    bind_port = int(gunicorn_settings()["bind"].rsplit(":", 1)[1])
    exposed = re.search(r"^EXPOSE ([\d ]+)$", (PROJECT / "Dockerfile").read_text(), flags=re.MULTILINE).group(1)
    assert exposed.split() == [str(port.container_port) for port in container().ports], "the image exposes the pod's ports"
    assert container_port.container_port == bind_port == 8000


def answered(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_probes_go_to_the_probe_port_which_answers_them(app: Flask) -> None:
    gateway = container()
    probes = {"startup": gateway.startup_probe, "readiness": gateway.readiness_probe, "liveness": gateway.liveness_probe}
    assert all(probes.values())
    assert probes["readiness"].http_get.path == "/readyz"
    assert probes["liveness"].http_get.path == "/healthz"
    [probe_port] = [port for port in gateway.ports if port.name == "probes"]
    assert f"0.0.0.0:{probe_port.container_port}" == Settings().probe_address, "where the probe server listens by default"
    healthcheck = re.search(r"^HEALTHCHECK .*\n.*$", (PROJECT / "Dockerfile").read_text(), flags=re.MULTILINE).group()
    assert f"'GATEWAY_PROBE_ADDRESS', ':{probe_port.container_port}'" in healthcheck and "/healthz" in healthcheck, "Docker's HEALTHCHECK too"
    # Compared once the records are read and the store's sharing known: both answers then come from one state.
    wait_for(lambda: probe_answer(services(app), "/readyz")[1]["job_records"]["ready"], 60, "the records to be read")
    server = ProbeServer("127.0.0.1:0", lambda path: probe_answer(services(app), path))
    server.start()
    try:
        for probe in probes.values():
            assert probe.http_get.port == "probes"
            expected = app.test_client().get(probe.http_get.path)
            assert answered(f"http://127.0.0.1:{server.port}{probe.http_get.path}") == (expected.status_code, expected.json)
    finally:
        server.close()


def test_an_unready_pod_is_asked_why_on_its_probe_port_as_the_docs_show() -> None:
    """The Service sends requests only to ready pods: docs/deployment.md asks an unready pod's /readyz through port-forward."""
    deployment, service, _ = manifests()
    assert not service.spec.publish_not_ready_addresses
    [probes] = [port.container_port for port in container().ports if port.name == "probes"]
    guide = (PROJECT / "docs" / "deployment.md").read_text()
    assert f"kubectl port-forward -n $NS deployment/{deployment.metadata.name} {probes}:{probes} &" in guide
    assert f"curl http://127.0.0.1:{probes}/readyz" in guide
    assert "$GATEWAY_URL/readyz" not in guide, "a notebook reaches the pod through the Service alone"


def test_security_context_and_resources() -> None:
    deployment = manifests().deployment
    pod = deployment.spec.template.spec
    gateway = container()
    assert pod.security_context.run_as_non_root and pod.security_context.seccomp_profile.type == "RuntimeDefault"
    context = gateway.security_context
    assert context.read_only_root_filesystem and context.allow_privilege_escalation is False
    assert context.capabilities.drop == ["ALL"]
    assert {mount.mount_path for mount in gateway.volume_mounts} == {"/tmp"}
    assert {volume.name: volume.empty_dir is not None for volume in pod.volumes} == {"tmp": True}
    assert gateway.resources.requests and gateway.resources.limits
    assert re.search(r"^USER 10001$", (PROJECT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert pod.security_context.run_as_user == 10001


def test_matplotlib_keeps_its_font_cache_in_the_pods_one_writable_place() -> None:
    """Under a read-only root it is made at the first preview, in the emptyDir, where docs/deployment.md says."""
    (config_dir,) = re.findall(r"\bMPLCONFIGDIR=(\S+)", (PROJECT / "Dockerfile").read_text())
    (mount,) = container().volume_mounts
    assert config_dir.startswith(mount.mount_path.rstrip("/") + "/")
    assert f"first preview (`MPLCONFIGDIR={config_dir}`" in (PROJECT / "docs" / "deployment.md").read_text()


def test_termination_grace_outlasts_gunicorns_graceful_timeout() -> None:
    deployment = manifests().deployment
    assert deployment.spec.template.spec.termination_grace_period_seconds >= gunicorn_settings()["graceful_timeout"] + 60


def test_running_jobs_and_their_cancel_fit_in_gunicorns_graceful_timeout() -> None:
    """After SIGTERM: the jobs' shutdown timeout, then up to STOP_TIMEOUT for cancelled tasks to end."""
    names = {variable.name for variable in container().env}
    assert "GATEWAY_SHUTDOWN_TIMEOUT" not in names, "the default is the one checked here"
    assert Settings().shutdown_timeout + STOP_TIMEOUT <= gunicorn_settings()["graceful_timeout"]


def test_gunicorn_believes_forwarded_headers_from_no_one_in_the_pod() -> None:
    """Clients reach the pod through its Service, with no proxy of ours in between: only loopback is trusted."""
    assert "FORWARDED_ALLOW_IPS" not in {variable.name for variable in container().env}
    assert gunicorn_settings()["forwarded_allow_ips"] == "127.0.0.1,::1"


def test_the_gateways_secret_and_its_workers_are_two_each_named_alike_everywhere() -> None:
    """The pod holds the key that lists and deletes; the workers of its own clusters another, which may not."""
    gateway = container()
    assert [source.secret_ref.name for source in gateway.env_from] == [SECRET]
    service = next(variable.value for variable in gateway.env if variable.name == "JUPYTERHUB_SERVICE_NAME")
    # The gateway's own clusters, as Dask Gateway names the gateway's hub service.
    worker = options_handler()({}, User(f"service:{service}"))["worker_extra_container_config"]
    assert worker["envFrom"] == [{"secretRef": {"name": WORKERS_SECRET}}] and WORKERS_SECRET != SECRET
    script = (PROJECT / "create_secret.sh").read_text()
    assert all(re.search(rf"^ +SECRET_NAME={name}$", script, flags=re.MULTILINE) for name in (SECRET, WORKERS_SECRET))


def test_both_hub_tokens_are_the_ones_zero_to_jupyterhub_generated_for_its_services() -> None:
    """The chart keeps hub.services.<name>.apiToken in its `hub` Secret; no token is written in any file."""
    env = {variable.name: variable for variable in container().env}
    token = env["JUPYTERHUB_API_TOKEN"].value_from.secret_key_ref
    service = env["JUPYTERHUB_SERVICE_NAME"].value
    assert (token.name, token.key) == ("hub", f"hub.services.{service}.apiToken")
    assert service in jupyterhub_values()["hub"]["services"]
    hub_auth = helm_values()["gateway"]["auth"]["jupyterhub"]
    assert "apiToken" not in hub_auth, "the dask-gateway chart reads it from the hub Secret by default"
    assert hub_auth["jupyterhubServiceName"] in jupyterhub_values()["hub"]["services"]
    assert all("apiToken" not in entry and "api_token" not in entry for entry in jupyterhub_values()["hub"]["services"].values())


def test_dask_gateway_settings_point_at_the_charts_service() -> None:
    env = {variable.name: variable.value for variable in container().env}
    assert env["DASK_GATEWAY__ADDRESS"] == "http://traefik-dask-gateway"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://traefik-dask-gateway:80"
    assert env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub" == helm_values()["gateway"]["auth"]["type"]
    assert load_settings({name: value for name, value in env.items() if value}).uses_dask_gateway


def test_one_image_for_the_gateway_and_its_dask_clusters_which_dask_gateway_accepts() -> None:
    """The pod's image is the one its clusters ask for, and the options handler gives it to the gateway's service."""
    image = container().image
    env = {variable.name: variable.value for variable in container().env}
    assert load_settings({name: value for name, value in env.items() if value}).cluster_options == {"image": image}
    assert image.rsplit(":", 1)[1] not in ("", "latest")
    assert "image" not in helm_values()["gateway"]["backend"], "users' clusters keep the chart's image"
    gateways_service = f"service:{env['JUPYTERHUB_SERVICE_NAME']}"
    assert options_handler()({"image": image}, User(gateways_service))["image"] == image
    base = re.search(r"^FROM (\S+)", (PROJECT / "Dockerfile").read_text(), flags=re.MULTILINE).group(1)
    assert base == DEBIAN_BASE_IMAGE, "the tests make this base locally"
    assert dockerfile_cmd()[:1] == ["gunicorn"]


def test_the_image_copies_every_top_level_module() -> None:
    copied = set(re.findall(r"([\w.]+\.py)\b", (PROJECT / "Dockerfile").read_text()))
    top_level_modules = {path.name for path in Path(PROJECT).glob("*.py")}
    assert top_level_modules == {"gateway.py", "gunicorn.conf.py"}, "service modules belong in the science_gateway package"
    assert top_level_modules <= copied, f"missing from the image: {top_level_modules - copied}"
    admitted = {line[1:] for line in (PROJECT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert top_level_modules | {"requirements.txt"} <= admitted, "the build context must hold what the Dockerfile copies"


@pytest.mark.parametrize("folder", ["science_gateway", "templates", "static"])
def test_the_image_copies_the_package_and_the_jobs_page(folder: str) -> None:
    assert re.search(rf"^COPY {folder}/ {folder}/$", (PROJECT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert f"!{folder}" in (PROJECT / ".dockerignore").read_text().splitlines()
    assert any((PROJECT / folder).iterdir())


def test_the_deployment_checks_its_callers_with_the_hub_that_dask_gateway_uses() -> None:
    env = {variable.name: variable.value for variable in container().env}
    settings = load_settings({name: value for name, value in env.items() if value})
    assert (settings.auth, settings.jupyterhub_service_name) == ("jupyterhub", "science-gateway")
    # zero-to-jupyterhub's hub service, in the namespace that Dask Gateway's chart shares with it.
    assert settings.jupyterhub_api_url == "http://hub:8081/hub/api"
    # Dask Gateway checks the scope that the hub configuration grants the gateway's service.
    assert helm_values()["gateway"]["auth"]["jupyterhub"]["jupyterhubServiceName"] == "dask-gateway"


def test_what_each_user_keeps_is_bounded_in_time_bytes_and_records() -> None:
    """A workshop's results must not pile up for ever: the manifest ships a ttl, a longest ttl and a quota."""
    environ = {variable.name: variable.value for variable in container().env if variable.value is not None}
    settings = load_settings({**environ, "JUPYTERHUB_API_TOKEN": "not-read-here"})
    assert (settings.result_ttl, settings.max_result_ttl) == (7 * 24 * 3600, 30 * 24 * 3600)
    assert settings.owner_quota_bytes == 10 * 2**30
    assert settings.max_records_per_owner == 1000
