"""dask_gateway_config.yaml against the dask-gateway chart's own schema, and the pods dask-gateway's controller makes of it."""

from typing import Any

import dask.config
import pytest
from dask_gateway_server.models import User
from kubernetes.client import V1Pod

from artifacts import chart, cluster_options, dask_clusters_policy, helm_values, manifests, options_handler, typed
from devtools.container_process import IMAGE_USER
from network_policies import selects
from science_gateway.cluster import WORKER_MALLOC_ENVIRON


def test_our_values_merged_over_the_charts_fit_its_schema() -> None:
    errors = chart("dask-gateway-chart").errors(helm_values())
    assert not errors, "\n".join(errors)


def test_the_schema_catches_a_misplaced_key() -> None:
    assert chart("dask-gateway-chart").errors({"gateway": {"backend": {"worker": {"extraContainerConfg": {}}}}}), "the check must be able to fail"


def test_values_set_what_the_service_needs() -> None:
    gateway = helm_values()["gateway"]
    assert gateway["auth"]["type"] == "jupyterhub"
    worker = gateway["backend"]["worker"]
    assert worker["cores"]["limit"] and worker["memory"]["limit"]
    snippet = "\n".join(gateway["extraConfig"].values())
    assert "idle_timeout" in snippet
    assert 'scheduler_cmd = ["dask", "scheduler"]' in snippet and 'worker_cmd = ["dask", "worker"]' in snippet
    assert "envFrom" not in gateway["backend"]["worker"]["extraContainerConfig"], "no Secret in every cluster's workers"
    assert "awsconfig" not in str(gateway["backend"]) and "gateway-results-workers" not in str(gateway["backend"]), "nor in their schedulers"


def test_only_the_science_gateway_services_clusters_mount_the_workers_secret_and_never_the_gateways() -> None:
    worker = options_handler()({}, User("service:science-gateway"))["worker_extra_container_config"]

    assert worker["envFrom"] == [{"secretRef": {"name": "gateway-results-workers"}}]
    assert worker["env"] == helm_values()["gateway"]["backend"]["worker"]["extraContainerConfig"]["env"], "the chart's settings kept"


@pytest.mark.parametrize("name", ["alice", "science-gateway", "user:service:science-gateway", "service:dask-gateway"])
def test_every_other_identity_gets_the_charts_defaults(name: str) -> None:
    """A user's name, even a user called science-gateway (Dask Gateway keeps services' names apart with the prefix)."""
    assert options_handler()({}, User(name)) == {}


def test_workers_on_kubernetes_get_the_malloc_settings_of_the_local_workers() -> None:
    environment = helm_values()["gateway"]["backend"]["worker"]["extraContainerConfig"]["env"]
    value = next(item["value"] for item in environment if item["name"] == "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON")
    collected = dask.config.collect_env({"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": value})
    assert collected["distributed"]["nanny"]["pre_spawn_environ"] == WORKER_MALLOC_ENVIRON


def pods_of(identity: str, options: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The scheduler's and a worker's pod that dask-gateway's Kubernetes controller makes for a cluster of ``identity``
    asked for with these cluster ``options``: the chart's values as the chart sets them, and the options handler's
    settings over them, as Dask Gateway applies them."""
    from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig
    from dask_gateway_server.backends.kubernetes.controller import KubeController

    backend = helm_values()["gateway"]["backend"]
    charts = {
        f"{component}_extra_{part}_config": backend[component].get(f"extra{part.capitalize()}Config", {})
        for component in ("scheduler", "worker")
        for part in ("pod", "container")
    }
    config = KubeClusterConfig(**{**charts, **options_handler()(options or {}, User(identity))})
    controller = KubeController(api_url="http://dask-gateway-api/api", gateway_instance="dask-gateway")
    return {component: controller.make_pod("science", "c0ffee", config, is_worker=component == "worker") for component in ("scheduler", "worker")}


@pytest.mark.parametrize("component", ["scheduler", "worker"])
def test_the_gateways_own_dask_pods_run_as_its_own_pod_does(component: str) -> None:
    """Unprivileged, the image's user, read-only but /tmp: as the image is tested in containers (devtools/container_process.py)."""
    pod: V1Pod = typed(pods_of("service:science-gateway")[component], "Pod")
    (container,) = pod.spec.containers
    gateways = manifests().deployment.spec.template.spec

    assert pod.spec.security_context == gateways.security_context and pod.spec.security_context.run_as_user == IMAGE_USER
    assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault" and pod.spec.automount_service_account_token is False
    context = container.security_context
    assert context.allow_privilege_escalation is False and context.read_only_root_filesystem is True and context.capabilities.drop == ["ALL"]
    mounts = {mount.mount_path: mount.name for mount in container.volume_mounts}
    volumes = {volume.name: volume for volume in pod.spec.volumes}
    assert volumes[mounts["/tmp"]].empty_dir is not None, "/tmp, where Dask spills, its one writable place"
    assert volumes[mounts["/etc/dask-credentials/"]].secret is not None, "the controller's own TLS credentials kept"
    assert selects(dask_clusters_policy()["spec"]["podSelector"], pod.metadata.labels), "under the policy that bars the metadata server"
    secrets = [source.secret_ref.name for source in container.env_from or []]
    assert secrets == (["gateway-results-workers"] if component == "worker" else [])


def test_users_dask_pods_are_the_charts_own() -> None:
    """A user's clusters are left as the chart makes them: no label of ours, no Secret."""
    for pod in pods_of("alice").values():
        assert not selects(dask_clusters_policy()["spec"]["podSelector"], pod["metadata"]["labels"])
        assert "securityContext" not in pod["spec"] and "envFrom" not in pod["spec"]["containers"][0]


GATEWAYS_SERVICE = "service:science-gateway"


def gateways_image_repository() -> str:
    return manifests().deployment.spec.template.spec.containers[0].image.rsplit(":", 1)[0]


def test_the_image_option_is_offered_to_the_gateways_service_alone() -> None:
    """Users see no option: their clusters keep Dask Gateway's default image."""
    assert [field.field for field in cluster_options()(User(GATEWAYS_SERVICE)).fields] == ["image"]
    for name in ("alice", "science-gateway", "service:dask-gateway"):
        assert not cluster_options()(User(name)).fields
        with pytest.raises(ValueError, match="Unknown fields"):
            options_handler()({"image": f"{gateways_image_repository()}:1.0.0"}, User(name))


@pytest.mark.parametrize("reference", [":1.0.0", ":2.0.0-rc1", "@sha256:" + "0" * 64, ":1.0.0@sha256:" + "0" * 64])
def test_the_gateways_service_may_choose_any_image_of_its_repository(reference: str) -> None:
    """Any tag or digest: a rolling upgrade's old and new pods each get clusters of their own image."""
    image = gateways_image_repository() + reference
    assert options_handler()({"image": image}, User(GATEWAYS_SERVICE))["image"] == image


def test_without_the_option_the_gateways_clusters_keep_the_default_image() -> None:
    assert "image" not in options_handler()({}, User(GATEWAYS_SERVICE))
    assert "image" not in options_handler()({"image": ""}, User(GATEWAYS_SERVICE))


@pytest.mark.parametrize(
    "suffix", ["-evil:1.0.0", "/other:1.0.0", ":", "", ":1.0.0/../x"], ids=["a longer name", "a path below", "no tag", "no reference", "a slash in the tag"]
)
def test_no_other_image_is_accepted(suffix: str) -> None:
    with pytest.raises(ValueError, match="is refused"):
        options_handler()({"image": gateways_image_repository() + suffix}, User(GATEWAYS_SERVICE))
    with pytest.raises(ValueError, match="is refused"):
        options_handler()({"image": "docker.io/library/python:3.11"}, User(GATEWAYS_SERVICE))


def test_the_gateways_pods_run_the_image_it_asks_for_and_users_pods_the_charts() -> None:
    """Through dask-gateway's own Kubernetes controller, as for the security settings above."""
    image = manifests().deployment.spec.template.spec.containers[0].image
    for pod in pods_of(GATEWAYS_SERVICE, {"image": image}).values():
        assert [container["image"] for container in pod["spec"]["containers"]] == [image]
    from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig

    # The image the chart's values (gateway.backend.image, which ours leave alone) set; here the class's default.
    default = KubeClusterConfig.class_traits()["image"].default_value
    assert default != image
    for pod in pods_of("alice").values():
        assert [container["image"] for container in pod["spec"]["containers"]] == [default]
