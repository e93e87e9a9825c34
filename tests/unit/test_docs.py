"""The documentation says what the code does: the configuration table against the code that reads the environment, and more."""

import ast
import importlib
import inspect
import itertools
import re
import runpy
from importlib.metadata import entry_points
from pathlib import Path

import dask.config
import pytest

from science_gateway.auth import NotAuthenticated
from science_gateway.settings import LONGEST_TTL, Settings, load_settings
from servers import PROJECT

TABLE = PROJECT / "docs" / "configuration.md"
# dask-gateway's own settings, which load_settings reads through dask's configuration, not by name.
READ_ELSEWHERE = re.compile(r"DASK_GATEWAY__\w+")


class RecordingEnvironment(dict):
    """An environment that notes every variable asked for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.asked.add(key)
        return super().__contains__(key)


def documented() -> dict[str, str | None]:
    """Each variable of the table's first column, with the default its second column writes (None: unset)."""
    rows = [line for line in TABLE.read_text().splitlines() if line.startswith("| `")]
    found = {}
    for row in rows:
        variables, default = row.split(" | ")[:2]
        value = re.fullmatch(r"`([^`]*)`", default.strip())
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", variables):
            found[name] = value.group(1) if value else None
    return found


@pytest.fixture(autouse=True)
def no_dask_config_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dask.config, "paths", [])


def read_by_load_settings() -> set[str]:
    """The variables load_settings asks for, with and without the hub's settings (read only with GATEWAY_AUTH=jupyterhub)."""
    environment = RecordingEnvironment()
    load_settings(environment)
    with_hub = RecordingEnvironment({"GATEWAY_AUTH": "jupyterhub", "JUPYTERHUB_API_URL": "http://hub:8081/hub/api"})
    load_settings(with_hub)
    # Dask's own configuration reads DASK_* variables of its own (DASK_INTERNAL_INHERIT_CONFIG): dask documents those.
    return {name for name in environment.asked | with_hub.asked if not name.startswith("DASK_")}


def test_every_variable_load_settings_reads_is_in_the_table() -> None:
    read = read_by_load_settings()
    assert "GATEWAY_RESULTS_URL" in read
    assert read - set(documented()) == set(), "read by load_settings but not in docs/configuration.md"


# The service's code: what runs in the gateway's process and on its workers, gunicorn's configuration included.
SERVICE_CODE = [PROJECT / "gateway.py", PROJECT / "gunicorn.conf.py", *sorted((PROJECT / "science_gateway").rglob("*.py"))]


def _is_environment(node: ast.expr) -> bool:
    """``os.environ``, or a function's ``environ`` argument (settings.py reads a mapping it is given)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "environ"


def _tuples_of_strings() -> dict[str, set[str]]:
    """Each module-level tuple of strings of the service's code, by name (results_objects.CONFIGURED_BY, imported elsewhere)."""
    return {
        target.id: {element.value for element in node.value.elts if isinstance(element, ast.Constant) and isinstance(element.value, str)}
        for path in SERVICE_CODE
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def environment_reads(path: Path) -> tuple[set[str], list[str]]:
    """The variables a module reads by name, and where it reads one this cannot name.

    A read is ``environ.get(NAME)``, ``environ[NAME]`` or ``os.getenv(NAME)``, with NAME a string, a
    loop variable over a module-level tuple of strings, or a parameter of a function that takes ``environ``
    (a helper of settings.py, whose callers pass the name: the string after ``environ`` in any call).
    """
    tree = ast.parse(path.read_text())
    tuples = _tuples_of_strings()
    loops = {
        loop.target.id: tuples[loop.iter.id]
        for loop in ast.walk(tree)
        if isinstance(loop, ast.comprehension) and isinstance(loop.target, ast.Name) and isinstance(loop.iter, ast.Name) and loop.iter.id in tuples
    }
    helpers_parameters = {
        argument.arg
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef) and "environ" in {argument.arg for argument in function.args.args}
        for argument in function.args.args
    }
    names: set[str] = set()
    unnamed: list[str] = []
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get" and _is_environment(node.func.value) or node.func.attr == "getenv":
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_environment(node.value):
            key = node.slice
        if isinstance(node, ast.Call):
            names |= {
                name.value
                for given, name in itertools.pairwise(node.args)
                if _is_environment(given) and isinstance(name, ast.Constant) and isinstance(name.value, str)
            }
        if key is None:
            continue
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
        elif isinstance(key, ast.Name) and key.id in loops:
            names |= loops[key.id]
        elif not (isinstance(key, ast.Name) and key.id in helpers_parameters):
            unnamed.append(f"{path.name}:{node.lineno}")
    return names, unnamed


def test_every_variable_the_services_code_reads_is_in_the_table_and_every_one_in_it_is_read() -> None:
    """Beyond load_settings: gunicorn.conf.py's own, and the S3 variables the results store is opened with."""
    read: set[str] = set()
    for path in SERVICE_CODE:
        names, unnamed = environment_reads(path)
        assert unnamed == [], "an environment read this test cannot name: name the variable"
        read |= names
    assert {"GATEWAY_RESULTS_URL", "FORWARDED_ALLOW_IPS", "AWS_ENDPOINT_URL_S3"} <= read, "reads in settings.py, gunicorn.conf.py, results_objects.py"
    table = set(documented())
    assert read - table == set(), "read by the service but not in docs/configuration.md"
    assert {name for name in table if not READ_ELSEWHERE.fullmatch(name)} - read - read_by_load_settings() == set(), "in the table but never read"
    assert "DASK_GATEWAY__ADDRESS" in table


def test_gunicorns_forwarded_allow_ips_default_is_the_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert runpy.run_path(str(PROJECT / "gunicorn.conf.py"))["forwarded_allow_ips"] == documented()["FORWARDED_ALLOW_IPS"]


@pytest.mark.parametrize(
    ("name", "default"), [(name, default) for name, default in documented().items() if default is not None and name in read_by_load_settings()]
)
def test_setting_a_variable_to_its_documented_default_changes_nothing(name: str, default: str) -> None:
    assert load_settings({name: default}) == load_settings({}) == Settings()


def test_the_longest_ttl_in_the_table_is_the_codes() -> None:
    assert f"({LONGEST_TTL} s)" in TABLE.read_text()


def test_the_api_documents_error_table_has_every_known_failure_with_its_status() -> None:
    import gateway  # noqa: F401 - every module that defines a failure is imported with it
    from science_gateway.errors import GatewayError

    table = (PROJECT / "docs" / "api.md").read_text().split("Every error is JSON of one shape", 1)[1]
    rows = re.findall(r"^\| (\d{3}) \| ([^|]+) \|", table, flags=re.MULTILINE)
    documented_pairs = {(int(status), code) for status, codes in rows for code in re.findall(r"`(\w+)`", codes)}
    kinds, known = [GatewayError], set()
    while kinds:
        kind = kinds.pop()
        kinds += kind.__subclasses__()
        if "code" in vars(kind) or kind is GatewayError:
            known.add((kind.status, kind.code))
            if kind.recorded_status:
                known.add((kind.recorded_status, kind.code))
    assert known - documented_pairs == set(), "failures the service knows but docs/api.md does not list"
    challenge = NotAuthenticated("no token").headers()["WWW-Authenticate"]
    assert f"`WWW-Authenticate: {challenge}`" in table, "the 401's header as the service sends it"


# The code the lead's replica coordination (issue 29) answers a standby's job requests with: the table states its
# contract before it lands; once it does, this set is empty.
CONTRACTED_CODES: set[str] = set()


def test_what_a_notebook_sees_names_the_answers_dependencies_and_retry_afters_of_the_code() -> None:
    import gateway  # noqa: F401 - every module that defines a failure is imported with it
    from science_gateway.errors import GatewayError
    from science_gateway.openapi import DEPENDENCIES, READINESS_PARTS

    table = (PROJECT / "docs" / "operations.md").read_text().split("## What a notebook sees", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| **")]
    kinds, by_code = [GatewayError], {}
    while kinds:
        kind = kinds.pop()
        kinds += kind.__subclasses__()
        if "code" in vars(kind):
            by_code[kind.code] = kind
    for row in rows:
        for status, code in re.findall(r"`(\d{3}) (\w+)`", row):
            if code in CONTRACTED_CODES:
                continue
            kind = by_code[code]
            assert int(status) in (kind.status, kind.recorded_status), (status, code)
        # A Retry-After the row writes is the one each of its 503s sends.
        for seconds in re.findall(r"`Retry-After: (\d+)`", row):
            for code in re.findall(r"`503 (\w+)`", row):
                if code not in CONTRACTED_CODES:
                    assert by_code[code]("x").headers().get("Retry-After") == seconds, (code, seconds)
        for dependency in re.findall(r"`(?:failing|error\.dependency)` `(\w+)`", row):
            assert dependency in READINESS_PARTS, dependency
    assert set(re.findall(r"`error\.dependency` `(\w+)`", table)) == set(DEPENDENCIES), "each dependency /readyz reports has its row"
    assert {by_code[code]("x").details()["dependency"] for code in ("storage_error", "cluster_not_ready")} == {"results_store", "cluster"}


API = (PROJECT / "docs" / "api.md").read_text()


def test_the_api_documents_requests_are_the_openapi_documents_operations() -> None:
    from science_gateway.openapi import openapi_document

    rows = re.findall(r"^\| `(GET|POST|DELETE|PUT|PATCH) (/[^`]*)` \|", API, flags=re.MULTILINE)
    documented_operations = {(method, re.sub(r"<(\w+)>", r"{\1}", path)) for method, path in rows}
    paths = openapi_document()["paths"]
    operations = {(method.upper(), path) for path, item in paths.items() for method in item if method in ("get", "post", "delete", "put", "patch")}
    assert documented_operations == operations


def test_the_api_documents_parameters_are_the_openapi_documents() -> None:
    from science_gateway.openapi import openapi_document

    table = API.split("**Parameters of `random-array`**", 1)[1].split("\n\n", 2)[1]
    documented_parameters = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))
    submit = openapi_document()["paths"]["/submit_job/{job_id}"]["get"]["parameters"]
    query = {parameter["name"] for parameter in submit if parameter["in"] == "query"} - {"wait"}
    assert documented_parameters == query
    assert "`?wait=false`" in API, "the one query parameter outside the table is described with the request"


def test_the_guide_to_writing_an_app_is_the_example_package_file_for_file() -> None:
    guide = (PROJECT / "docs" / "apps.md").read_text()
    shown = dict(re.findall(r"^`(examples/apps/[^`]+)`:\n\n```\w+\n(.*?)```", guide, flags=re.MULTILINE | re.DOTALL))
    package = PROJECT / "examples" / "apps" / "julia-set"
    files = {str(path.relative_to(PROJECT)): path.read_text() for path in [package / "pyproject.toml", *package.glob("*/*.py")]}
    assert shown == files, "docs/apps.md shows each file of the example package as it is"


def test_the_example_package_is_what_the_gateway_finds_installed() -> None:
    (found,) = [entry for entry in entry_points(group="science_gateway.apps") if entry.name == "julia-set"]
    installed = found.load()
    assert (installed.name, installed.__module__) == ("julia-set", "gateway_julia_set")
    source = (PROJECT / "examples" / "apps" / "julia-set" / "gateway_julia_set" / "__init__.py").read_text()
    assert inspect.getsource(importlib.import_module(installed.__module__)) == source, "make test installs the package as it is in the tree"


DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]


def test_every_query_the_docs_write_after_a_path_starts_with_a_question_mark() -> None:
    """`/submit_job/<id>&shards=none` is a job id with `&shards=none` in it: a path's query begins with `?`."""
    queried = [(path.name, found) for path in DOCS for found in re.findall(r"[^\s`'\"(]*/[^\s`'\"(]*[?&]\w+=[^\s`'\")]*", path.read_text())]
    assert len(queried) > 1, "the docs write paths with queries (`$GATEWAY_URL/jobs?status=running`, `/submit_job/<id>?shards=none`)"
    assert [(name, url) for name, url in queried if re.search(r"[?&]", url).group() != "?"] == []
