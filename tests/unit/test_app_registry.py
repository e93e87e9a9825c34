"""Which apps a gateway offers: the built-ins and the installed packages' entry points, each checked at start-up."""

from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway import create_app
from helpers import installed_package
from science_gateway.apps import App, Limits, Output, OutputTooLarge, Plan
from science_gateway.apps.registry import AppLoadError, ParametersRefused, UnknownApp, load_apps
from science_gateway.job_work import plan_work
from science_gateway.settings import load_settings

AN_APP = '''
from science_gateway.apps import App


class {name}(App):
    name = "{app}"
    version = "1.0"
    description = "An app of a package"
    parameters = {schema}

    def plan(self, parameters, context):
        raise NotImplementedError

    def compute(self, region, parameters, output, inputs):
        raise NotImplementedError
'''


def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, distribution: str, app: str, schema: str = '{"type": "object"}') -> None:
    """An installed package offering ``app``, found on sys.path as pip would install it."""
    module = distribution.replace("-", "_")
    source = AN_APP.format(name="Offered", app=app, schema=schema)
    monkeypatch.syspath_prepend(str(installed_package(tmp_path / distribution, distribution, {module: source}, {app: f"{module}:Offered"})))


@pytest.fixture(autouse=True)
def packages_dir(tmp_path: Path) -> None:
    for name in ("histograms", "second-coarsen", "broken-schema", "not-an-app", "unloadable"):
        (tmp_path / name).mkdir()


def test_the_built_ins_come_first_then_the_installed_apps_each_with_a_valid_schema() -> None:
    apps = list(load_apps())
    assert [app.name for app in apps][:2] == ["random-array", "coarsen"]
    assert "julia-set" in [app.name for app in apps], "the example package, installed by make test"
    for app in apps:
        Draft202012Validator.check_schema(app.parameters)


def test_an_installed_package_adds_its_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package(tmp_path, monkeypatch, "histograms", "histogram")
    assert load_apps().get("histogram").description == "An app of a package"


def test_two_apps_of_one_name_stop_the_start_up_naming_both_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package(tmp_path, monkeypatch, "second-coarsen", "coarsen")
    both = r"two apps are named 'coarsen': one of package science-gateway \(built in\) and one of package second-coarsen 0.1.0"
    with pytest.raises(AppLoadError, match=both):
        load_apps()
    with pytest.raises(AppLoadError, match="second-coarsen"):
        create_app(load_settings({"GATEWAY_RESULTS_URL": str(tmp_path)}))


def test_an_app_whose_schema_is_not_json_schema_stops_the_start_up_naming_package_and_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package(tmp_path, monkeypatch, "broken-schema", "broken", schema='{"type": "objekt"}')
    with pytest.raises(AppLoadError, match=r"package broken-schema 0.1.0: app 'broken' \(broken_schema.Offered\): its parameters are not a valid JSON Schema"):
        load_apps()


def test_an_entry_point_that_is_no_app_or_does_not_load_stops_the_start_up_naming_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = {"not_an_app": "class Offered:\n    pass\n"}
    monkeypatch.syspath_prepend(str(installed_package(tmp_path / "not-an-app", "not-an-app", modules, {"thing": "not_an_app:Offered"})))
    with pytest.raises(AppLoadError, match=r"package not-an-app 0.1.0: .*Offered.* is not a subclass of science_gateway.apps.App"):
        load_apps()


def test_an_entry_point_whose_module_fails_stops_the_start_up_naming_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = {"unloadable": "raise ImportError('needs scipy')\n"}
    monkeypatch.syspath_prepend(str(installed_package(tmp_path / "unloadable", "unloadable", modules, {"fails": "unloadable:App"})))
    with pytest.raises(AppLoadError, match=r"package unloadable 0.1.0: the app 'fails' \(unloadable:App\) could not be loaded: ImportError: needs scipy"):
        load_apps()


def test_gateway_apps_restricts_the_list_and_names_an_app_not_installed() -> None:
    assert [app.name for app in load_apps(["coarsen"])] == ["coarsen"]
    with pytest.raises(AppLoadError, match="GATEWAY_APPS names histogram, which no installed package offers; the apps are random-array, coarsen"):
        load_apps(["coarsen", "histogram"])
    assert load_settings({"GATEWAY_APPS": " coarsen, random-array "}).apps == ("coarsen", "random-array")
    assert load_settings({"GATEWAY_APPS": ""}).apps is None


def test_an_unknown_app_is_a_404_listing_the_apps() -> None:
    apps = load_apps(["random-array", "coarsen"])
    with pytest.raises(UnknownApp) as unknown:
        apps.get("histogram")
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_app")
    assert unknown.value.details() == {"apps": ["coarsen", "random-array"]}


@pytest.mark.parametrize(
    ("parameters", "failures"),
    [
        ({"source": "my-first-job", "factor": 1}, [("/factor", "1 is not valid under any of the given schemas")]),
        ({"source": "my-first-job", "factor": [0, 2]}, [("/factor", "[0, 2] is not valid under any of the given schemas")]),
        ({"source": "my-first-job", "factor": [2, 2, 2]}, [("/factor", "[2, 2, 2] is not valid under any of the given schemas")]),
        ({"source": "../alice/x", "factor": 2}, [("/source", "'../alice/x' does not match '^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$'")]),
        ({"factor": 2}, [("", "'source' is a required property")]),
        ({"source": "x", "factor": 2, "method": "max"}, [("/method", "unknown parameter; the parameters are source, factor")]),
        ([], [("", "[] is not of type 'object'")]),
    ],
)
def test_each_rule_of_coarsens_schema_refuses_by_pointer(parameters: object, failures: list) -> None:
    apps = load_apps()
    with pytest.raises(ParametersRefused) as refused:
        apps.check(apps.get("coarsen"), parameters)
    assert refused.value.details() == {"details": [{"pointer": pointer, "reason": reason} for pointer, reason in failures]}


class Outputs(App):
    """An app that plans the output its parameters name, and checks no limit itself."""

    name = "outputs"
    version = "1.0"
    description = "Plans the output it is given"
    parameters = {"type": "object"}

    def plan(self, parameters, context):
        return Plan(parameters, Output(tuple(parameters["shape"]), tuple(parameters["chunks"]), "float64", parameters.get("shards")))

    def compute(self, region, parameters, output, inputs):
        raise NotImplementedError


@pytest.mark.parametrize(
    ("shape", "chunks", "shards", "limit"),
    [
        ((10**400, 1), (1, 1), None, "GATEWAY_MAX_ELEMENTS"),
        ((10**4, 10**4), (1, 1), None, "GATEWAY_MAX_CHUNKS"),
        ((8192, 1025), (8192, 1025), None, "GATEWAY_MAX_CHUNK_BYTES"),
        ((8192, 8200), (8, 4100), (8192, 4100), "256.0 MiB\\) a shard"),
    ],
)
def test_the_gateway_holds_every_apps_output_to_its_size_limits(shape, chunks, shards, limit) -> None:
    """Whatever an app plans, however large its sides, the gateway refuses it 413 naming the limit."""
    limits = Limits(10**8, 10_000, 64 * 2**20, "none", 3)
    with pytest.raises(OutputTooLarge, match=limit) as refused:
        plan_work(Outputs(), {"shape": shape, "chunks": chunks, "shards": shards}, limits, lambda job_id: None)
    assert (refused.value.status, refused.value.code) == (413, "job_too_large")
    assert plan_work(Outputs(), {"shape": (8192, 1024), "chunks": (8192, 1024), "shards": None}, limits, lambda job_id: None).output.chunks == (8192, 1024)
