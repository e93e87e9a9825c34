"""Reading the deployment artifacts as the tools that consume them do."""

from __future__ import annotations

import json
import re
import runpy
from typing import Any, NamedTuple

import jsonschema
import pytest
import yaml
from kubernetes.client import ApiClient, V1Deployment, V1NetworkPolicy, V1Service
from traitlets.config import Config

from servers import PROJECT


class _Response:
    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data)


class Manifests(NamedTuple):
    deployment: V1Deployment
    service: V1Service
    network_policy: V1NetworkPolicy


# The NetworkPolicy of the gateway's own Dask pods; the other, `gateway`, is the gateway pod's.
DASK_CLUSTERS_POLICY = "gateway-dask-clusters"


def _all_manifest_documents() -> list[dict[str, Any]]:
    documents = list(yaml.safe_load_all((PROJECT / "deploy_gateway.yaml").read_text()))
    names = sorted((doc["kind"], doc["metadata"]["name"]) for doc in documents)
    assert names == [
        ("Deployment", "gateway"),
        ("NetworkPolicy", "gateway"),
        ("NetworkPolicy", DASK_CLUSTERS_POLICY),
        ("PodDisruptionBudget", "gateway"),
        ("Service", "gateway-svc"),
    ]
    return documents


def manifest_documents() -> dict[str, dict[str, Any]]:
    """deploy_gateway.yaml's documents of the gateway's pod by kind, as plain data: its Deployment, PodDisruptionBudget, Service and NetworkPolicy."""
    return {doc["kind"]: doc for doc in _all_manifest_documents() if doc["metadata"]["name"] != DASK_CLUSTERS_POLICY}


def dask_clusters_policy() -> dict[str, Any]:
    """deploy_gateway.yaml's NetworkPolicy of the gateway's own Dask pods, as plain data."""
    (policy,) = [doc for doc in _all_manifest_documents() if doc["metadata"]["name"] == DASK_CLUSTERS_POLICY]
    return policy


def typed(document: dict[str, Any], kind: str) -> Any:
    """A document as the kubernetes client's typed model of its kind (``Pod`` for a V1Pod)."""
    return ApiClient().deserialize(_Response(document), f"V1{kind}")


def manifests() -> Manifests:
    """deploy_gateway.yaml as the kubernetes client's typed models."""
    documents = manifest_documents()
    return Manifests(*(typed(documents[kind], kind) for kind in ("Deployment", "Service", "NetworkPolicy")))


def disruption_budget() -> Any:
    """deploy_gateway.yaml's PodDisruptionBudget as the kubernetes client's typed model."""
    return typed(manifest_documents()["PodDisruptionBudget"], "PodDisruptionBudget")


def helm_values() -> dict[str, Any]:
    """dask_gateway_config.yaml: the dask-gateway chart's values."""
    return yaml.safe_load((PROJECT / "dask_gateway_config.yaml").read_text())


def cluster_options() -> Any:
    """``c.Backend.cluster_options`` as extraConfig sets it, run as the chart runs extraConfig: with ``c`` and ``get_property``.

    A callable of the user, as Dask Gateway's backend calls it: the ``Options`` that user is offered.
    """
    gateway = helm_values()["gateway"]
    properties = {"gateway": {key: value for key, value in gateway.items() if key != "extraConfig"}}

    def get_property(key: str, default: Any = None) -> Any:
        value: Any = properties
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    config = Config()
    for name in sorted(gateway["extraConfig"]):
        exec(gateway["extraConfig"][name], {"c": config, "get_property": get_property})
    return config.Backend.cluster_options


def options_handler() -> Any:
    """What Dask Gateway makes of a request's cluster options for a user: the options that user is offered, parsed
    (unknown ones refused, defaults filled in), then the handler's settings (``Backend.process_cluster_options``)."""
    offered = cluster_options()

    def configuration(requested: dict[str, Any], user: Any) -> dict[str, Any]:
        options = offered(user)
        return options.get_configuration(options.parse_options(requested), user)

    return configuration


def jupyterhub_values() -> dict[str, Any]:
    """jupyterhub_values.yaml: the zero-to-jupyterhub chart's values."""
    return yaml.safe_load((PROJECT / "jupyterhub_values.yaml").read_text())


# Where docs/security.md shows the values that give notebooks the read-only key, for an operator who chooses to.
READERS_OPT_IN_HEADING = "### Giving notebooks the read-only key"


def readers_opt_in_values() -> dict[str, Any]:
    """The zero-to-jupyterhub values of that section: its first YAML block."""
    section = (PROJECT / "docs" / "security.md").read_text().split(READERS_OPT_IN_HEADING, 1)[1]
    return yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])


# The charts' own values and schemas, kept beside the project as data.
CHARTS = PROJECT.parent / "shared" / "reference"


class Chart(NamedTuple):
    values: dict[str, Any]
    schema: dict[str, Any]

    def errors(self, ours: dict[str, Any]) -> list[str]:
        """What the chart's schema finds wrong in our values merged over the chart's, as helm validates them."""
        # The schemas are draft 7; the dask-gateway one spells its own $schema key wrongly.
        schema = {key: value for key, value in self.schema.items() if not key.startswith("$schema")}
        found = sorted(jsonschema.Draft7Validator(schema).iter_errors(merged(self.values, ours)), key=str)
        return [f"{'/'.join(map(str, error.path))}: {error.message}" for error in found]


def chart(name: str) -> Chart:
    """A chart's default values and schema from the reference folder; skip the test where it is absent."""
    folder = CHARTS / name
    if not (folder / "values.schema.yaml").exists():
        pytest.skip(f"the {name} chart's values and schema are not at {folder} (../shared/reference)")
    return Chart(yaml.safe_load((folder / "values.yaml").read_text()), yaml.safe_load((folder / "values.schema.yaml").read_text()))


def merged(base: Any, override: Any) -> Any:
    """Helm's merge of values: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {key: merged(base.get(key), value) for key, value in override.items()} | {
            key: value for key, value in base.items() if key not in override
        }
    return override


def dockerfile_cmd() -> list[str]:
    """The exec-form CMD of the Dockerfile."""
    commands = re.findall(r"^CMD\s+(\[.*\])\s*$", (PROJECT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert len(commands) == 1, "one exec-form CMD"
    return json.loads(commands[0])


def gunicorn_settings() -> dict[str, Any]:
    return runpy.run_path(str(PROJECT / "gunicorn.conf.py"))
