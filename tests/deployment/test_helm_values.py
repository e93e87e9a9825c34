"""dask_gateway_config.yaml against the dask-gateway chart's own schema."""

import dask.config
import pytest
from dask_gateway_server.models import User

from artifacts import chart, helm_values, options_handler
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
