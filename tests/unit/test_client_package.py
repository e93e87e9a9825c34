"""The client package (client/): what it declares, what it imports, and its parts that need no gateway.

Its tests against a real gateway are tests/integration/test_client.py."""

import argparse
import ast
import re
import sys
import tomllib

import pytest
import requests

from science_gateway_client.cli import build_parser, parameter
from science_gateway_client.errors import ConfigurationError, JobCancelled, JobFailed, unsuccessful
from science_gateway_client.events import ServerSentEvent, parse_events
from science_gateway_client.gateway import JOB_ID, new_job_id
from science_gateway_client.jobs import Job
from science_gateway_client.options import resolve
from science_gateway_client.transport import Transport, retry_after_seconds
from servers import PROJECT

# make test installs it into .venv from here (requirements-test.txt: -e ./client[xarray]).
CLIENT = PROJECT / "client"

PROJECT_TABLE = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]


def test_the_package_declares_its_name_the_science_gateway_command_and_light_dependencies() -> None:
    assert PROJECT_TABLE["name"] == "science-gateway-client"
    assert PROJECT_TABLE["scripts"] == {"science-gateway": "science_gateway_client.cli:main"}
    assert [requirement.split(">")[0] for requirement in PROJECT_TABLE["dependencies"]] == ["requests", "tqdm"]
    assert [requirement.split(">")[0] for requirement in PROJECT_TABLE["optional-dependencies"]["xarray"]] == ["xarray", "zarr", "fsspec", "aiohttp"]


def test_the_client_imports_nothing_of_the_server_and_nothing_it_does_not_declare() -> None:
    imported = set()
    for path in (CLIENT / "science_gateway_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    # urllib3 comes with requests, which the client's streams read through.
    assert imported - set(sys.stdlib_module_names) == {"requests", "urllib3", "tqdm", "xarray"}


@pytest.mark.parametrize(
    ("given", "value"),
    [("seed=7", 7), ("shape=[2000,2000]", [2000, 2000]), ("dtype=float64", "float64"), ('source="123"', "123"), ("flag=true", True), ("note=a=b", "a=b")],
)
def test_a_cli_parameter_is_json_where_it_parses_else_a_string(given: str, value: object) -> None:
    assert parameter(given) == (given.split("=", 1)[0], value)


def test_a_cli_parameter_without_a_name_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["submit", "random-array", "-p", "=7"])
    assert exited.value.code == 2


def test_the_address_comes_from_the_argument_else_the_environment_and_its_absence_names_the_variable() -> None:
    assert resolve(None, None, environ={"GATEWAY_URL": "http://gw/", "JUPYTERHUB_API_TOKEN": "t"}) == resolve("http://gw", "t", environ={})
    assert resolve("http://mine", "mine", environ={"GATEWAY_URL": "http://gw", "JUPYTERHUB_API_TOKEN": "t"}).token == "mine"
    assert resolve("http://gw", None, environ={}).token is None, "a gateway without auth needs no token"
    with pytest.raises(ConfigurationError, match="GATEWAY_URL"):
        resolve(None, None, environ={})
    with pytest.raises(ConfigurationError, match="http://"):
        resolve("gateway-svc", None, environ={})


def test_retry_after_is_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("10") == 10
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0, "a date in the past: at once"
    assert retry_after_seconds(None) is retry_after_seconds("soon") is None


def test_the_ids_the_client_picks_are_ids_the_gateway_takes_and_differ() -> None:
    ids = {new_job_id(app) for app in ("random-array", "my app/v2", "..", "x" * 200) for _ in range(3)}
    assert len(ids) == 12 and all(JOB_ID.fullmatch(job_id) for job_id in ids), ids


def test_a_job_ends_in_the_error_of_its_status_with_the_gateways_code_and_message() -> None:
    failed = unsuccessful({"job_id": "j", "status": "failed", "error": {"code": "source_deleted", "message": "source 's' was deleted"}})
    assert isinstance(failed, JobFailed) and (failed.code, failed.message) == ("source_deleted", "source 's' was deleted")
    assert "job 'j' failed (source_deleted)" in str(failed)
    assert isinstance(unsuccessful({"job_id": "j", "status": "cancelled", "error": None}), JobCancelled)


STREAM = b"retry: 2000\n\nid: 1\nevent: job\ndata: {\"status\": \"queued\"}\n\n: keep-alive\n\nid: 2\nevent: job\ndata: {\"status\": \"done\"}\n\n"


def test_the_event_parser_gives_each_event_with_its_id_whatever_the_cuts() -> None:
    expected = [ServerSentEvent("job", '{"status": "queued"}', "1"), ServerSentEvent("job", '{"status": "done"}', "2")]
    assert list(parse_events([STREAM])) == expected
    assert list(parse_events([STREAM[i : i + 1] for i in range(len(STREAM))])) == expected, "a byte at a time"
    crlf = STREAM.replace(b"\n", b"\r\n")
    assert list(parse_events([crlf[i : i + 1] for i in range(len(crlf))])) == expected, "CRLF cut between CR and LF"
    assert list(parse_events([STREAM.replace(b"\n", b"\r")])) == expected


def test_the_event_parser_follows_the_standards_fields() -> None:
    stream = b"\xef\xbb\xbfdata:a\ndata: b\nid: 7\nretry: x\nunknown: y\n\ndata\n\nid\nevent: e\n\ndata: left without its blank line"
    events = list(parse_events([stream]))
    assert events == [ServerSentEvent("message", "a\nb", "7"), ServerSentEvent("message", "", "7")], "an id stays until another is set"


GUIDE = (PROJECT / "docs" / "user-guide.md").read_text().split("## The Python client and the command line", 1)[1].split("\n## ", 1)[0]


def test_the_guides_exit_codes_are_the_clis() -> None:
    from science_gateway_client import cli

    table = GUIDE.split("| exit code | when |", 1)[1]
    documented = [int(code) for code in re.findall(r"^\| (\d) \|", table, flags=re.MULTILINE)]
    assert documented == [cli.EXIT_DONE, cli.EXIT_JOB_UNSUCCESSFUL, cli.EXIT_USAGE, cli.EXIT_REFUSED, cli.EXIT_UNAVAILABLE] == [0, 1, 2, 3, 4]


def test_the_guides_commands_are_the_clis_and_its_retry_bound_is_the_default() -> None:
    from science_gateway_client.options import DEFAULT_RETRY_FOR, DEFAULT_TIMEOUT

    table = GUIDE.split("| command | does |", 1)[1]
    documented = re.findall(r"^\| `(\w+)[ `]", table, flags=re.MULTILINE)
    (commands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    assert documented == list(commands.choices)
    assert f"timeout={DEFAULT_TIMEOUT:.0f}, retry_for={DEFAULT_RETRY_FOR:.0f}," in GUIDE
    assert f"`retry_for` seconds ({DEFAULT_RETRY_FOR:.0f}\nby default" in GUIDE


@pytest.mark.parametrize(
    ("http_url", "sent"),
    [
        ("http://gw/jobs/a/result", True),
        ("http://gw:80/services/science-gateway/jobs/a/result", True),
        ("https://gw/jobs/a/result", False),
        ("http://gw:8000/jobs/a/result", False),
        ("http://elsewhere.example/jobs/a/result", False),
    ],
)
def test_the_token_goes_only_to_the_gateways_own_scheme_host_and_port(http_url: str, sent: bool) -> None:
    job = Job(Transport(resolve("http://gw", "a-token", environ={})), {"job_id": "a", "status": "done", "http_url": http_url})
    if sent:
        assert job.http_url == http_url and job.storage_options == {"headers": {"Authorization": "token a-token"}}
    else:
        with pytest.raises(ConfigurationError, match="not on the gateway at http://gw"):
            job.open()


def test_the_token_is_in_no_repr_and_a_session_of_ones_own_carries_it_to_the_gateway_alone() -> None:
    options = resolve("http://gw", "a-token", environ={})
    session = requests.Session()
    transport = Transport(options, session)
    sent = {url: transport._auth(requests.Request("GET", url).prepare()).headers.get("Authorization") for url in ("http://gw/jobs", "http://other/jobs")}

    assert "a-token" not in repr(options) and "a-token" not in repr(transport._auth)
    assert sent == {"http://gw/jobs": "token a-token", "http://other/jobs": None}
    assert "Authorization" not in session.headers, "the caller's session, used for anything else, has no token"
