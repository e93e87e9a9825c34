"""Reading the deployment artifacts as the tools that consume them do."""

from __future__ import annotations

import json
import re
import runpy
from typing import Any

import yaml
from kubernetes.client import ApiClient, V1Deployment, V1Service

from servers import PROJECT


class _Response:
    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data)


def manifests() -> tuple[V1Deployment, V1Service]:
    """deploy_gateway.yaml as the kubernetes client's typed models."""
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((PROJECT / "deploy_gateway.yaml").read_text())}
    assert set(documents) == {"Deployment", "Service"}
    client = ApiClient()
    return client.deserialize(_Response(documents["Deployment"]), "V1Deployment"), client.deserialize(
        _Response(documents["Service"]), "V1Service"
    )


def helm_values() -> dict[str, Any]:
    return yaml.safe_load((PROJECT / "dask_gateway_config.yaml").read_text())


def dockerfile_cmd() -> list[str]:
    """The exec-form CMD of the Dockerfile."""
    commands = re.findall(r"^CMD\s+(\[.*\])\s*$", (PROJECT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert len(commands) == 1, "one exec-form CMD"
    return json.loads(commands[0])


def gunicorn_settings() -> dict[str, Any]:
    return runpy.run_path(str(PROJECT / "gunicorn.conf.py"))
