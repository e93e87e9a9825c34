"""Fixtures that start real servers on 127.0.0.1 and stop them by PID at teardown."""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, sync_playwright

from devtools.gunicorn_gateway import RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import LocalS3, start_local_s3
from devtools.processes import stop_process
from devtools.seaweed_s3 import SeaweedS3, start_seaweed_s3
from helpers import keep_responses, new_secret, reachable_cluster, responses_log, running_app

# What `make test` said when it tried to install chromium.
INSTALL_LOG = Path(__file__).parents[1] / ".venv" / ".browser"
# As root, in a machine with no internet: no sandbox, and none of chromium's own calls home.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip

BUCKET = "gateway-results"
# The bucket of the SeaweedFS server (the seaweed fixture), another name than rclone's, so that no mix-up goes unseen.
SEAWEED_BUCKET = "seaweed-results"
MEASUREMENTS = pytest.StashKey[list[str]]()
AUDITED_SECRETS = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[MEASUREMENTS] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Audits of what the whole session left behind run after every other test.
    items.sort(key=lambda item: item.get_closest_marker("audit_after_all") is not None)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if config.stash[MEASUREMENTS]:
        terminalreporter.section("measured")
        for line in config.stash[MEASUREMENTS]:
            terminalreporter.write_line(line)


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Report a measurement (not a timing assertion) in the summary at the end of the run."""
    return request.config.stash[MEASUREMENTS].append


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A real S3 server (rclone) with the results bucket, its credentials in os.environ.

    The environment is what the gateway and its LocalCluster workers read, as in production.
    """
    base = tmp_path_factory.mktemp("s3")
    server = start_local_s3(
        base / "data",
        (BUCKET,),
        access_key=f"test-access-{secrets.token_hex(4)}",
        secret_key=new_secret(),
        log_file=base / "server.log",
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server.environ().items():
            patch.setenv(name, value)
        # The Secret gives the gateway a JupyterHub token as well: every gateway
        # of the tests holds one, and the last test checks that none leaked.
        patch.setenv("JUPYTERHUB_API_TOKEN", new_secret())
        yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A second real S3 server (SeaweedFS's ``weed mini``), with conditional writes, and its own bucket and credentials.

    Its variables are not in os.environ, which the ``s3`` fixture's rclone owns: a gateway on it gets
    :func:`helpers.environ_on` as its environment (under gunicorn, or patched in for a module).
    """
    base = tmp_path_factory.mktemp("seaweed")
    server = start_seaweed_s3(
        base / "data", SEAWEED_BUCKET, access_key=f"seaweed-access-{secrets.token_hex(4)}", secret_key=new_secret(),
        log_file=base / "server.log",
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="session")
def audited_secrets(pytestconfig: pytest.Config) -> list[str]:
    """Secrets that servers made, in a form no pattern knows (tokens a hub issued, moto's keys, a hub's cookie secret): the audit looks for each."""
    return pytestconfig.stash.setdefault(AUDITED_SECRETS, [])


@pytest.fixture(scope="session")
def results_fs(s3: LocalS3) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)


@pytest.fixture(scope="session")
def app(s3: LocalS3) -> Iterator[Flask]:
    """The gateway with a 3-worker LocalCluster, shared by the tests that need a ready service."""
    with running_app({**os.environ, "GATEWAY_RESULTS_URL": f"s3://{BUCKET}"}, ready_within=120) as app:
        yield app


def serve_for_module(
    tmp_path_factory: pytest.TempPathFactory, name: str, results_url: str, *, server: LocalS3 | None = None, **settings: str
) -> Iterator[RunningGateway]:
    """Body of a module's fixture: the gateway under gunicorn with these settings, stopped at teardown.

    On ``server`` (e.g. the ``seaweed`` fixture's) if given, else on the session's S3 server (os.environ's).
    Its log is ``<name>/gateway.log`` under the session's base directory, where its LocalCluster's scheduler
    writes its address: ``helpers.gateways_cluster(gateway.log_file.parent)`` reaches its workers.
    """
    directory = tmp_path_factory.mktemp(name)
    store = server.environ() if server else {}
    environ = {**os.environ, **store, "GATEWAY_RESULTS_URL": results_url, **settings, **reachable_cluster(directory)}
    gateway = start_gunicorn_gateway(environ, log_file=directory / "gateway.log")
    yield gateway
    stop_process(gateway.process, timeout=60)


@pytest.fixture(scope="session")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[requests.Session]:
    """HTTP to the gateways under gunicorn; every response is kept for the audit of secrets."""
    with keep_responses(requests.Session(), responses_log(tmp_path_factory.getbasetemp())) as session:
        yield session


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def job_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


# Module-scoped: Playwright's sync API holds an event loop in this thread while it runs.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        said = INSTALL_LOG.read_text().strip().splitlines()[-1:] if INSTALL_LOG.exists() else ["make test did not try"]
        pytest.skip(f"the browser test needs Debian's chromium, which is not installed: {said[0]}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
