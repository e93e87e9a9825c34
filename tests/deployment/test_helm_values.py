"""dask_gateway_config.yaml against the dask-gateway chart's own schema."""

from typing import Any

import dask.config
import jsonschema
import pytest
import yaml

from artifacts import helm_values
from cluster import WORKER_MALLOC_ENVIRON
from servers import PROJECT

CHART = PROJECT.parent / "shared" / "reference" / "dask-gateway-chart"


def merged(base: Any, override: Any) -> Any:
    """Helm's merge of values: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {key: merged(base.get(key), value) for key, value in override.items()} | {
            key: value for key, value in base.items() if key not in override
        }
    return override


@pytest.fixture(scope="module")
def chart() -> tuple[dict, dict]:
    if not (CHART / "values.schema.yaml").exists():
        pytest.skip(f"the dask-gateway chart's schema is not at {CHART}")
    return yaml.safe_load((CHART / "values.yaml").read_text()), yaml.safe_load((CHART / "values.schema.yaml").read_text())


def test_our_values_merged_over_the_charts_fit_its_schema(chart: tuple[dict, dict]) -> None:
    defaults, schema = chart
    # The schema's own $schema key is malformed; the chart's schema is draft 7.
    schema = {key: value for key, value in schema.items() if key != "$schema"}
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(merged(defaults, helm_values())), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, error.path))}: {error.message}" for error in errors)


def test_the_schema_catches_a_misplaced_key(chart: tuple[dict, dict]) -> None:
    defaults, schema = chart
    schema = {key: value for key, value in schema.items() if key != "$schema"}
    wrong = merged(defaults, {"gateway": {"backend": {"worker": {"extraContainerConfg": {}}}}})
    assert list(jsonschema.Draft7Validator(schema).iter_errors(wrong)), "the check must be able to fail"


def test_values_set_what_the_service_needs() -> None:
    gateway = helm_values()["gateway"]
    assert gateway["auth"]["type"] == "jupyterhub"
    worker = gateway["backend"]["worker"]
    assert worker["cores"]["limit"] and worker["memory"]["limit"]
    snippet = "\n".join(gateway["extraConfig"].values())
    assert "idle_timeout" in snippet
    assert 'scheduler_cmd = ["dask", "scheduler"]' in snippet and 'worker_cmd = ["dask", "worker"]' in snippet
    assert "envFrom" not in snippet, "the Secret goes through extraContainerConfig, which the schema checks"


def test_workers_on_kubernetes_get_the_malloc_settings_of_the_local_workers() -> None:
    environment = helm_values()["gateway"]["backend"]["worker"]["extraContainerConfig"]["env"]
    value = next(item["value"] for item in environment if item["name"] == "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON")
    collected = dask.config.collect_env({"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": value})
    assert collected["distributed"]["nanny"]["pre_spawn_environ"] == WORKER_MALLOC_ENVIRON
