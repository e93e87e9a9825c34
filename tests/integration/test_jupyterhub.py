"""Authentication with a real JupyterHub: notebooks' and callers' tokens, and the gateway's own login to Dask Gateway.

The whole chain runs on real processes, the hub configured from
jupyterhub_values.yaml: alice's and bob's notebook servers, spawned by the hub,
run code with the tokens the hub minted for them -> the gateway -> the hub's
check (jupyterhub's service-auth helper); the gateway's service token ->
dask-gateway-server -> the hub's check (its JupyterHub authenticator).
Notebooks hold no storage key: they read their results through the gateway.
Tokens made through the hub's REST API serve the tests of admins, refusals and
the room of 200 users.
"""

import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nbformat
import numpy as np
import pytest
import requests
import yaml
import zarr
from dask_gateway import Gateway, JupyterHubAuth
from playwright.sync_api import Browser, expect

from conftest import BUCKET
from devtools.gunicorn_gateway import RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import LocalS3
from devtools.processes import free_port, stop_process
from helpers import (
    SECRET_FORM,
    assert_made_from_its_seed,
    descendants,
    finished_job,
    helpers_by_value,
    kubelets_probe_timeout,
    new_secret,
    outputs,
    run_notebook_on_server,
    server_sent_events,
    wait_for,
    wait_for_the_stop,
    wait_for_the_tasks,
    workers_held,
)
from servers import (
    HUB_VALUES,
    DaskGatewayServer,
    JupyterHubServer,
    jupyterhub_authentication,
    start_dask_gateway_server,
    start_jupyterhub,
)

USERS = ["alice", "bob", "carol", "gateway-bot"]
ADMINS = "gateway-admins"
SMALL = "shape=100,100"
FINISHED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def hub_gateway_port() -> int:
    """Chosen before the hub starts: the hub sends browsers back to the gateway's OAuth callback on it."""
    return free_port()


@pytest.fixture(scope="module")
def dask_gateway_ports() -> tuple[int, int]:
    """Chosen before the hub starts: notebooks are told where Dask Gateway is."""
    return free_port(), free_port()


def notebook_environment(gateway_url: str, dask_gateway_ports: tuple[int, int]) -> dict[str, str]:
    """singleuser.extraEnv of jupyterhub_values.yaml, each variable pointed at this machine's stand-in: no storage key."""
    api_port, proxy_port = dask_gateway_ports
    return {
        "GATEWAY_URL": gateway_url,
        "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{api_port}",
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://127.0.0.1:{proxy_port}",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
    }


def start_hub(workdir: Path, gateway_port: int, dask_gateway_ports: tuple[int, int], **options) -> JupyterHubServer:
    """A hub whose proxy serves the gateway on ``gateway_port`` at /services/science-gateway/, as the values' service url does."""
    services = {"science-gateway": new_secret(), "dask-gateway": new_secret()}
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    return start_jupyterhub(
        workdir, USERS, {ADMINS: ["carol"]}, services, admin_token=new_secret(),
        notebook_environment=notebook_environment(gateway_url, dask_gateway_ports), service_urls={"science-gateway": gateway_url}, **options,
    )  # fmt: skip


# Where the hub's proxy serves the gateway (JupyterHub's /services/<name>/), and the login comes back through it.
SERVICE_PATH = "/services/science-gateway"


@pytest.fixture(scope="module")
def hub_public_port() -> int:
    """Chosen before the hub starts: the hub sends browsers back to the gateway's OAuth callback through its proxy."""
    return free_port()


def hub_callback(hub_public_port: int) -> str:
    return f"http://127.0.0.1:{hub_public_port}{SERVICE_PATH}/oauth_callback"


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, hub_gateway_port: int, hub_public_port: int, dask_gateway_ports: tuple[int, int],
    audited_secrets: list[str],
) -> Iterator[JupyterHubServer]:
    server = start_hub(
        tmp_path_factory.mktemp("jupyterhub"), hub_gateway_port, dask_gateway_ports,
        oauth_redirects={"science-gateway": hub_callback(hub_public_port)}, public_port=hub_public_port,
    )  # fmt: skip
    audited_secrets.extend(server.own_secrets)
    yield server
    stop_process(server.process, timeout=60)


def servers_token(hub: JupyterHubServer, user: str) -> str:
    """The token the hub minted for ``user``'s spawned server: its JUPYTERHUB_API_TOKEN, as its notebooks have it."""
    (server,) = [
        process for process in descendants(hub.process.pid)
        if "jupyterhub-singleuser" in " ".join(process.cmdline()) and process.environ().get("JUPYTERHUB_USER") == user
    ]  # fmt: skip
    return server.environ()["JUPYTERHUB_API_TOKEN"]


@pytest.fixture(scope="module")
def alices_server(hub: JupyterHubServer) -> Iterator[str]:
    """alice's notebook server, spawned by the hub as her home page spawns it; its URL."""
    yield hub.start_server("alice")
    hub.stop_server("alice")


@pytest.fixture(scope="module")
def bobs_server(hub: JupyterHubServer) -> Iterator[str]:
    yield hub.start_server("bob")
    hub.stop_server("bob")


@pytest.fixture(scope="module")
def notebook_tokens(hub: JupyterHubServer, alices_server: str, bobs_server: str, audited_secrets: list[str]) -> dict[str, str]:
    """The tokens the hub minted for alice's and bob's spawned servers: a notebook's token, the `server` role's scopes."""
    minted = {user: servers_token(hub, user) for user in ("alice", "bob")}
    audited_secrets.extend(minted.values())
    return minted


@pytest.fixture(scope="module")
def tokens(hub: JupyterHubServer, audited_secrets: list[str]) -> dict[str, str]:
    """An API token for each user, as JupyterHub puts one in every notebook's JUPYTERHUB_API_TOKEN."""
    issued = {user: hub.new_token(user)[0] for user in USERS}
    audited_secrets.extend(issued.values())
    return issued


@pytest.fixture(scope="module")
def dask_gateway_server(
    s3: LocalS3, hub: JupyterHubServer, dask_gateway_ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaskGatewayServer]:
    server = start_dask_gateway_server(
        tmp_path_factory.mktemp("dask-gateway-hub"), {"gateway-results-workers": s3.environ()}, ports=dask_gateway_ports,
        authentication=jupyterhub_authentication(hub, "dask-gateway"),
    )  # fmt: skip
    yield server
    stop_process(server.process, timeout=60)


def gateway_environ(hub: JupyterHubServer, dask_gateway: DaskGatewayServer, results_url: str, token: str, **settings: str) -> dict[str, str]:
    """As deploy_gateway.yaml configures the gateway: JupyterHub auth for its callers and for its Dask Gateway login."""
    return {
        **os.environ,
        "GATEWAY_RESULTS_URL": results_url,
        "GATEWAY_AUTH": "jupyterhub",
        "JUPYTERHUB_API_URL": hub.api_url,
        "JUPYTERHUB_API_TOKEN": token,
        "DASK_GATEWAY__ADDRESS": dask_gateway.address,
        "DASK_GATEWAY__PROXY_ADDRESS": dask_gateway.proxy_address,
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        # Short, so that a revoked token is refused within the test.
        "GATEWAY_AUTH_CACHE_SECONDS": "1",
        **settings,
    }


@pytest.fixture(scope="module")
def hub_gateway(
    hub: JupyterHubServer, dask_gateway_server: DaskGatewayServer, hub_gateway_port: int, hub_public_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    # Browsers log in through the hub, as deploy_gateway.yaml has it: at the hub's address, where its proxy serves both
    # the hub and the gateway (so no JUPYTERHUB_HOST), and the callback under the gateway's prefix there.
    environ = gateway_environ(
        hub, dask_gateway_server, f"s3://{BUCKET}/hub", hub.service_tokens["science-gateway"],
        JUPYTERHUB_SERVICE_PREFIX=f"{SERVICE_PATH}/", JUPYTERHUB_OAUTH_CALLBACK_URL=hub_callback(hub_public_port),
    )  # fmt: skip
    gateway = start_gunicorn_gateway(environ, port=hub_gateway_port, log_file=tmp_path_factory.mktemp("hub-gateway") / "gateway.log")
    yield gateway
    stop_process(gateway.process, timeout=60)


def log_in_at_the_hub(page: Any, url: str, user: str) -> None:
    """Open ``url``, log in as ``user`` at the hub's form it leads to, and be back at the jobs page."""
    page.goto(url)
    page.fill("#username_input", user)
    page.fill("#password_input", "any password: the test hub's dummy authenticator")
    page.click("#login_submit")
    expect(page).to_have_title("Science gateway: jobs")


def as_user(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def test_the_gateway_gets_its_cluster_from_dask_gateway_with_its_service_token(
    hub_gateway: RunningGateway, dask_gateway_server: DaskGatewayServer, hub: JupyterHubServer, http
) -> None:
    ready = http.get(f"{hub_gateway.url}/readyz", timeout=30).json()
    assert ready["status"] == "ready" and ready["cluster"]["kind"] == "dask-gateway"

    auth = JupyterHubAuth(api_token=hub.service_tokens["science-gateway"])
    clusters = Gateway(dask_gateway_server.address, proxy_address=dask_gateway_server.proxy_address, auth=auth).list_clusters()
    assert len(clusters) == 1, "the gateway's one cluster, listed under its own (service) identity"


def test_probes_and_metrics_need_no_token_and_everything_else_does(
    hub_gateway: RunningGateway, hub: JupyterHubServer, tokens: dict[str, str], http
) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http.get(f"{hub_gateway.url}{path}", timeout=30).status_code == 200, path
        # Through the hub's proxy, which anyone on the internet reaches, they are no open paths.
        through_the_hub = http.get(f"{hub.public_url}{SERVICE_PATH}{path}", timeout=30)
        assert through_the_hub.status_code == 401 and through_the_hub.json()["error"]["code"] == "not_authenticated", path

    for path in ("/", "/jobs", "/openapi.json", f"/submit_job/no-token?{SMALL}", "/jobs/no-token/preview.png"):
        response = http.get(f"{hub_gateway.url}{path}", timeout=30)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "not_authenticated"
        assert response.headers["WWW-Authenticate"].startswith("token")

    bad = http.get(f"{hub_gateway.url}/jobs", headers=as_user("not-a-token-the-hub-issued"), timeout=30)
    assert bad.status_code == 401 and "wrong, expired or revoked" in bad.json()["error"]["message"]
    for scheme in ("token", "Bearer", "bearer"):
        response = http.get(f"{hub_gateway.url}/jobs", headers={"Authorization": f"{scheme} {tokens['alice']}"}, timeout=30)
        assert response.status_code == 200, scheme


def test_a_revoked_token_is_refused_and_one_without_the_access_scope_is_forbidden(
    hub_gateway: RunningGateway, hub: JupyterHubServer, audited_secrets: list[str], http
) -> None:
    token, token_id = hub.new_token("bob")
    narrow, _ = hub.new_token("bob", scopes=["read:users:name!user=bob"])
    audited_secrets.extend([token, narrow])
    assert http.get(f"{hub_gateway.url}/jobs", headers=as_user(token), timeout=30).status_code == 200

    hub.revoke("bob", token_id)

    def refused() -> bool:
        return http.get(f"{hub_gateway.url}/jobs", headers=as_user(token), timeout=30).status_code == 401

    wait_for(refused, 15, "the revoked token to be refused once the 1 s cache has expired")
    forbidden = http.get(f"{hub_gateway.url}/jobs", headers=as_user(narrow), timeout=30)
    assert forbidden.status_code == 403
    assert "access:services!service=science-gateway" in forbidden.json()["error"]["message"]


def test_thirty_first_calls_at_once_with_one_new_token_are_all_answered(hub_gateway: RunningGateway, hub: JupyterHubServer, audited_secrets) -> None:
    """A workshop's first minute: each notebook's first cells at once, with a token the gateway has never seen."""
    token, _ = hub.new_token("alice", scopes=["access:services!service=science-gateway"])
    audited_secrets.append(token)
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda _: requests.get(f"{hub_gateway.url}/jobs", headers=as_user(token), timeout=60), range(30)))
    assert [answer.status_code for answer in answers] == [200] * 30, [answer.text[:200] for answer in answers if answer.status_code != 200]


def test_a_hub_user_named_like_the_gateways_service_owns_jobs_of_their_own(hub_gateway: RunningGateway, hub: JupyterHubServer, audited_secrets) -> None:
    hub.create_users(["service:science-gateway"])
    token, _ = hub.new_token("service:science-gateway", scopes=["access:services!service=science-gateway"])
    audited_secrets.append(token)
    submitted = requests.post(f"{hub_gateway.url}/jobs", json={"job_id": "named-like-a-service", "shape": [100, 100]}, headers=as_user(token), timeout=60)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["owner"] == "user:service:science-gateway"


def jobs_on_the_page(http, url: str, caller: dict[str, str]) -> list[tuple[str, str]]:
    """The (job id, owner) of each row of the jobs page as this caller's browser gets it."""
    page = http.get(f"{url}/", headers={**caller, "Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html"), page.text
    rows = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r'<tr data-job-id="([^"]*)" data-owner="([^"]*)"', rows)


def test_each_user_sees_only_their_own_jobs_and_an_admin_reaches_anyones_explicitly(hub_gateway: RunningGateway, tokens: dict[str, str], http) -> None:
    url = hub_gateway.url
    alice, bob, carol = as_user(tokens["alice"]), as_user(tokens["bob"]), as_user(tokens["carol"])
    mine = http.get(f"{url}/submit_job/alices-run?{SMALL}", headers=alice, timeout=60).json()
    theirs = http.get(f"{url}/submit_job/bobs-run?{SMALL}", headers=bob, timeout=60).json()
    assert (mine["owner"], theirs["owner"]) == ("alice", "bob")
    assert theirs["http_url"] == f"{url}/users/bob/jobs/bobs-run/result"

    listed = {job["job_id"] for job in http.get(f"{url}/jobs", headers=alice, timeout=30).json()["jobs"]}
    assert "alices-run" in listed and "bobs-run" not in listed
    alices_page = jobs_on_the_page(http, url, alice)
    assert ("alices-run", "alice") in alices_page and not [row for row in alices_page if row[1] != "alice"], "the page: her own jobs alone"
    for method, path in (
        ("GET", "/jobs/bobs-run"), ("GET", "/jobs/bobs-run/preview.png"), ("DELETE", "/jobs/bobs-run"),
        ("GET", "/users/bob/jobs/bobs-run"), ("GET", "/users/bob/jobs/bobs-run/preview.png"), ("DELETE", "/users/bob/jobs/bobs-run"),
        ("GET", "/users/bob/jobs/bobs-run/result/zarr.json"), ("GET", "/users/nobody/jobs/bobs-run"),
    ):  # fmt: skip
        response = http.request(method, f"{url}{path}", headers=alice, timeout=60)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found", (method, path)
        assert "bob" not in response.json()["error"]["message"].replace("bobs-run", ""), "neither where nor whose"
    own = http.get(f"{url}/submit_job/bobs-run?{SMALL}", headers=alice, timeout=60).json()
    assert own["owner"] == "alice" and own["url"].endswith("/.users/alice/bobs-run"), "alice's own job of that id"

    everyone = [(job["owner"], job["job_id"]) for job in http.get(f"{url}/jobs?limit=1000", headers=carol, timeout=30).json()["jobs"]]
    assert {("alice", "alices-run"), ("bob", "bobs-run"), ("alice", "bobs-run")} <= set(everyone)
    assert {("alices-run", "alice"), ("bobs-run", "bob"), ("bobs-run", "alice")} <= set(jobs_on_the_page(http, url, carol)), "an admin's page: everyone's"
    assert http.get(f"{url}/jobs/bobs-run", headers=carol, timeout=60).status_code == 404, "an admin's own ids are their own too"
    assert http.get(f"{url}/users/bob/jobs/bobs-run", headers=carol, timeout=60).json()["owner"] == "bob"
    assert http.get(f"{url}/users/bob/jobs/bobs-run/preview.png?size=thumbnail", headers=carol, timeout=60).status_code == 200
    assert http.get(f"{url}/users/bob/jobs/bobs-run", headers=bob, timeout=60).json() == http.get(f"{url}/jobs/bobs-run", headers=bob, timeout=60).json()
    assert http.delete(f"{url}/users/bob/jobs/bobs-run", headers=carol, timeout=60).status_code == 204
    assert http.get(f"{url}/jobs/bobs-run", headers=bob, timeout=60).status_code == 404
    assert http.get(f"{url}/jobs/bobs-run", headers=alice, timeout=60).json()["status"] == "done", "alice's job of that id stays"


def test_a_user_cancels_only_their_own_running_job(
    hub: JupyterHubServer, hub_gateway: RunningGateway, dask_gateway_server: DaskGatewayServer, tokens: dict[str, str], http
) -> None:
    url = hub_gateway.url
    alice, bob = as_user(tokens["alice"]), as_user(tokens["bob"])
    with ThreadPoolExecutor(1) as pool:
        with gateways_workers_held(hub, dask_gateway_server) as client:
            assert http.post(f"{url}/jobs", json={"job_id": "alices-run-to-cancel", "shape": [100, 100]}, headers=alice, timeout=30).status_code == 202
            wait_for_the_tasks(client, "alices-run-to-cancel")

            assert http.delete(f"{url}/jobs/alices-run-to-cancel", headers=bob, timeout=60).status_code == 404
            # The DELETE of a running job answers once its tasks have stopped, after the workers go on.
            cancelled = pool.submit(http.delete, f"{url}/jobs/alices-run-to-cancel", headers=alice, timeout=120)
            wait_for_the_stop(client, "alices-run-to-cancel")
        answer = cancelled.result(timeout=120)

    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"


def test_the_notebook_runs_on_alices_hub_spawned_server_with_the_token_the_hub_minted_for_it(
    hub_gateway: RunningGateway, alices_server: str, hub: JupyterHubServer, tokens: dict[str, str], http
) -> None:
    cells = run_notebook_on_server(alices_server, hub.admin_token)

    _, submitted, watched, opened_with_xarray, _, plotted = cells
    # The record the POST answered with, as the job was queued.
    assert "'queued'" in outputs(submitted), outputs(submitted)
    # Gateway() with no arguments: the server's GATEWAY_URL and token. Its bar (tqdm's, a widget or text) and the record once done.
    assert "chunk/s" in outputs(watched) and "'done', {'chunks_written': 100, 'chunks_total': 100}" in outputs(watched), outputs(watched)
    assert "(y: 1000, x: 1000)" in outputs(opened_with_xarray), outputs(opened_with_xarray)
    assert [output for output in plotted.outputs if "image/png" in output.get("data", {})], "the plot cell shows its image"
    job_id = outputs(submitted).split("'")[1]
    record = http.get(f"{hub_gateway.url}/jobs/{job_id}", headers=as_user(tokens["alice"]), timeout=30).json()
    assert record["owner"] == "alice" and record["status"] == "done"
    assert f'"GET /users/alice/jobs/{job_id}/events HTTP/1.1" 200' in hub_gateway.log(), "the client followed the job's events"


def test_alices_own_dask_workers_get_none_of_the_gateways_secrets_and_the_gateways_do(
    hub_gateway: RunningGateway, alices_server: str, hub: JupyterHubServer, dask_gateway_server: DaskGatewayServer,
    tmp_path: Path, http,
) -> None:
    """dask-gateway's client in alice's notebook, configured by singleuser.extraEnv, logs in with the server's token,
    starts her own cluster and reads her workers' environment, as anyone may from a notebook."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(USERS_OWN_CLUSTER)])
    nbformat.write(notebook, tmp_path / "own_cluster.ipynb")

    (cell,) = run_notebook_on_server(alices_server, hub.admin_token, tmp_path / "own_cluster.ipynb")

    said = outputs(cell)
    assert "started, listed, stopped" in said, said
    assert "'DASK_GATEWAY_CLUSTER_NAME'" in said, "the workers' variables were read"
    assert "secret values: []" in said and "AWS_ACCESS_KEY_ID" not in said and "AWS_SECRET_ACCESS_KEY" not in said, said
    name = said.split("cluster ")[1].split()[0]
    logs = dask_gateway_server_logs(dask_gateway_server) / name
    wait_for(lambda: len(list(logs.glob("worker-*.log"))) == 1, 30, "alice's worker log to be kept for the audit of secrets")

    auth = JupyterHubAuth(api_token=hub.service_tokens["science-gateway"])
    auth = JupyterHubAuth(api_token=hub.service_tokens["science-gateway"])
    gateways_own = Gateway(dask_gateway_server.address, proxy_address=dask_gateway_server.proxy_address, auth=auth).list_clusters()
    assert len(gateways_own) == 1, "alice's cluster was hers, not listed under the gateway's identity"
    workers = [
        process.environ() for process in descendants(dask_gateway_server.process.pid) if "worker" in process.cmdline()
    ]  # fmt: skip
    gateways_workers = [env for env in workers if env["DASK_GATEWAY_CLUSTER_NAME"] == gateways_own[0].name]
    assert len(gateways_workers) == 3 and all("AWS_SECRET_ACCESS_KEY" in env for env in gateways_workers), "the gateway's workers write"
    assert not any(name.startswith("JUPYTERHUB_") for env in workers for name in env)
    assert http.get(f"{hub_gateway.url}/readyz", timeout=30).json()["status"] == "ready"


def dask_gateway_server_logs(server: DaskGatewayServer) -> Path:
    return server.workdir / "cluster-logs"


# The form of the tests' secrets (helpers.SECRET_FORM): the cell names any variable holding one.
USERS_OWN_CLUSTER = f"""
import os, re
from dask_gateway import Gateway

gateway = Gateway()
cluster = gateway.new_cluster()
cluster.scale(1)
client = cluster.get_client()
client.wait_for_workers(1, timeout=120)
environments = client.run(lambda: dict(os.environ))
secret = re.compile({SECRET_FORM!r})
print("secret values:", sorted(name for env in environments.values() for name, value in env.items() if secret.search(value)))
print("variables:", sorted(name for env in environments.values() for name in env))
listed = [report.name for report in gateway.list_clusters()]
client.close()
cluster.shutdown()
assert cluster.name in listed, listed
print(f"cluster {{cluster.name}} started, listed, stopped")
"""


@pytest.fixture(scope="module")
def hub_with_default_server_role(
    tmp_path_factory: pytest.TempPathFactory, dask_gateway_ports: tuple[int, int], audited_secrets: list[str]
) -> Iterator[tuple[JupyterHubServer, int]]:
    """A hub configured from jupyterhub_values.yaml less its `server` role, so notebooks' tokens get JupyterHub's default."""
    values = yaml.safe_load(HUB_VALUES.read_text())
    del values["hub"]["loadRoles"]["server"]
    gateway_port = free_port()
    server = start_hub(tmp_path_factory.mktemp("jupyterhub-default-server-role"), gateway_port, dask_gateway_ports, values=values)
    audited_secrets.extend(server.own_secrets)
    yield server, gateway_port
    stop_process(server.process, timeout=60)


def test_without_the_server_role_the_notebook_is_told_which_scope_and_setting_it_lacks(
    hub_with_default_server_role: tuple[JupyterHubServer, int], dask_gateway_server: DaskGatewayServer, tmp_path: Path
) -> None:
    hub, gateway_port = hub_with_default_server_role
    environ = gateway_environ(hub, dask_gateway_server, f"s3://{BUCKET}/hub-default-server-role", hub.service_tokens["science-gateway"])
    # Its own cluster does not matter here: Dask Gateway checks tokens with the other hub.
    gateway = start_gunicorn_gateway(environ, port=gateway_port, log_file=tmp_path / "gateway.log", ready_timeout=0)
    try:
        server = hub.start_server("alice")
        _, submitted, *rest = run_notebook_on_server(server, hub.admin_token)
        hub.stop_server("alice")
    finally:
        stop_process(gateway.process, timeout=60)

    said = outputs(submitted)
    refused = "NotAuthenticated: the gateway refused POST /jobs: 403 forbidden: alice's token does not grant access:services!service=science-gateway"
    assert refused in said, said
    assert "`server` role" in said and "hub.loadRoles.server.scopes" in said
    assert not any(cell.outputs for cell in rest), "the notebook stops at the refusal"


def through_the_hub(hub: JupyterHubServer) -> str:
    """The gateway as browsers reach it: through the hub's proxy, at its prefix on the hub's address."""
    return f"{hub.public_url}{SERVICE_PATH}"


def test_a_browser_logs_in_through_the_hub_and_submits_from_the_page(
    hub: JupyterHubServer, hub_gateway: RunningGateway, browser: Browser, tokens: dict[str, str], http
) -> None:
    service = through_the_hub(hub)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{service}/")
        expect(page.locator("#username_input")).to_be_visible()  # the hub's login form
        page.fill("#username_input", "alice")
        page.fill("#password_input", "any password: the test hub's dummy authenticator")
        page.click("#login_submit")
        expect(page).to_have_title("Science gateway: jobs")
        assert page.url == f"{service}/", "back at the gateway's page, through the hub"

        page.fill("input[name=job_id]", "from-alices-browser")
        page.fill("input[name=shape]", "100,100")
        page.click("#submit-job button[type=submit]")
        row = page.locator('#jobs tbody tr[data-job-id="from-alices-browser"]')
        expect(row).to_have_attribute("data-status", "done", timeout=60_000)
        expect(row.locator(".owner")).to_have_text("by alice")
        cookies = {cookie["name"]: cookie for cookie in context.cookies(f"{service}/")}
        # The hub's users' servers share its address: the login goes to the gateway's prefix alone.
        assert "service-science-gateway" not in {cookie["name"] for cookie in context.cookies(f"{hub.public_url}/user/alice/")}
        # The login cookie is no token for a GET that makes a job, as a link from another site could.
        by_link = page.request.get(f"{service}/submit_job/from-a-link?shape=100,100")
        assert by_link.status == 401

        # Another site on this host (another port is the same site, so the Lax cookie goes along)
        # submits an empty form to the gateway as alice's browser.
        other_site = f"http://127.0.0.1:{free_port()}/"
        form = f'<form method="post" action="{service}/jobs"></form><script>document.forms[0].submit()</script>'
        page.route(other_site, lambda route: route.fulfill(body=form, content_type="text/html"))
        page.goto(other_site)
        expect(page.locator("body")).to_contain_text("cross_site_request")
    finally:
        context.close()

    alices = http.get(f"{hub_gateway.url}/jobs", headers=as_user(tokens["alice"]), timeout=30).json()["jobs"]
    record = next(job for job in alices if job["job_id"] == "from-alices-browser")
    assert record["owner"] == "alice"
    assert not [job for job in alices if job["submitted_at"] > record["submitted_at"]], "the other site's form made no job"
    login = cookies["service-science-gateway"]
    assert login["httpOnly"] and login["path"] == SERVICE_PATH, "the page's script never sees the token, nor do other paths of the hub"


def served_through_the_hub(hub: JupyterHubServer) -> None:
    """Until the hub's proxy serves the gateway: the hub adds the service's route once it has waited for it at its start.

    The gateway's own answer there is its 401 (no path is open through the proxy); the hub's, before the route, a 404 page.
    """

    def gateways_answer() -> bool:
        answer = requests.get(f"{through_the_hub(hub)}/healthz", timeout=30)
        return answer.status_code == 401 and answer.headers.get("Content-Type") == "application/json"

    wait_for(gateways_answer, 60, "the hub's proxy to route to the gateway")


def test_a_token_call_through_the_hubs_proxy_reaches_the_gateway_whose_urls_carry_the_prefix(
    hub: JupyterHubServer, hub_gateway: RunningGateway, tokens: dict[str, str], http
) -> None:
    """configurable-http-proxy forwards the full path: the gateway serves it under the prefix, and says so in its URLs."""
    served_through_the_hub(hub)
    service, alice = through_the_hub(hub), as_user(tokens["alice"])
    submitted = http.post(f"{service}/jobs", json={"job_id": "through-the-hub", "shape": [100, 100]}, headers=alice, timeout=60)
    assert submitted.status_code == 202, submitted.text
    assert submitted.headers["Location"] == f"{SERVICE_PATH}/jobs/through-the-hub"
    done = finished_job(lambda: http.get(f"{service}/jobs/through-the-hub", headers=alice, timeout=30).json(), 120, "the job through the hub")
    assert done["status"] == "done" and done["http_url"] == f"{service}/users/alice/jobs/through-the-hub/result"
    listed = http.get(f"{service}/jobs", headers=alice, timeout=30).json()["jobs"]
    assert listed and all(job["http_url"].startswith(f"{service}/users/alice/jobs/") for job in listed)
    # The result through the hub, at its http_url; and the same job at the gateway's own address, with URLs of that address.
    assert http.get(f"{done['http_url']}/zarr.json", headers=alice, timeout=30).json()["node_type"] == "group"
    direct = http.get(f"{hub_gateway.url}/jobs/through-the-hub", headers=alice, timeout=30).json()
    assert direct == {**done, "http_url": f"{hub_gateway.url}/users/alice/jobs/through-the-hub/result"}
    assert http.get(f"{service}/jobs", timeout=30).status_code == 401, "the proxy adds no login"


def test_a_browser_opens_the_gateway_from_the_hubs_services_menu_and_watches_a_held_job_run_to_done(
    hub: JupyterHubServer, hub_gateway: RunningGateway, dask_gateway_server: DaskGatewayServer, browser: Browser
) -> None:
    served_through_the_hub(hub)
    service, job_id = through_the_hub(hub), f"watched-{secrets.token_hex(3)}"
    context = browser.new_context()
    page = context.new_page()
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if request.resource_type == "eventsource" else None)
    failed: list[str] = []
    page.on("response", lambda response: failed.append(f"{response.status} {response.url}") if response.status >= 400 else None)
    try:
        log_in_at_the_hub(page, f"{service}/", "alice")

        # The hub's home page lists the gateway under Services, and its link opens the page.
        page.goto(f"{hub.public_url}/hub/home")
        page.get_by_role("button", name="Services").click()
        page.get_by_role("link", name="science-gateway").click()
        expect(page).to_have_title("Science gateway: jobs")
        assert page.url == f"{service}/"

        with gateways_workers_held(hub, dask_gateway_server) as client:
            page.fill("input[name=job_id]", job_id)
            page.fill("input[name=shape]", "100,100")
            page.click("#submit-job button[type=submit]")
            row = page.locator(f'#jobs tbody tr[data-job-id="{job_id}"]')
            wait_for_the_tasks(client, job_id)
            # Held on the paused workers: running, its bar at none of its chunks.
            expect(row).to_have_attribute("data-status", "running", timeout=60_000)
            expect(row.locator("progress")).to_have_attribute("value", "0")
        expect(row).to_have_attribute("data-status", "done", timeout=120_000)
        # The bar full: every chunk of the job's written.
        expect(row.locator(".chunks")).to_have_text(re.compile(r"^([1-9][0-9]*)/\1$"))
        assert row.locator("progress").evaluate("bar => bar.value === bar.max && bar.max > 0")
        expect(row.locator(".result-url")).to_have_text(f"{service}/users/alice/jobs/{job_id}/result")
    finally:
        context.close()
    # The page followed the job through its event stream, under the prefix, and no stream was refused.
    assert f"{service}/users/alice/jobs/{job_id}/events" in streams, streams
    assert failed == [], failed


def test_a_browsers_login_lasts_its_max_age_leaves_no_code_in_the_log_and_logging_out_ends_it_at_the_hub(
    hub: JupyterHubServer, hub_gateway: RunningGateway, browser: Browser, audited_secrets: list[str], http
) -> None:
    service = through_the_hub(hub)
    context = browser.new_context()
    page = context.new_page()
    callbacks: list[dict[str, list[str]]] = []
    page.on("request", lambda request: callbacks.append(parse_qs(urlsplit(request.url).query)) if "/oauth_callback?" in request.url else None)
    try:
        log_in_at_the_hub(page, f"{service}/", "bob")
        logged_in_at = time.time()
        (login,) = [cookie for cookie in context.cookies(f"{service}/") if cookie["name"] == "service-science-gateway"]
        (callback,) = callbacks
        code, state = callback["code"][0], callback["state"][0]
        audited_secrets.append(code)

        page.click("#logout button")
        expect(page.locator("#username_input")).to_be_visible()  # the hub's login form again, past its logout
        kept = [cookie for cookie in context.cookies(f"{service}/") if cookie["name"] == "service-science-gateway"]
    finally:
        context.close()

    # Max-Age, as the browser keeps it: GATEWAY_LOGIN_MAX_AGE's default; a minute of slack for a loaded machine.
    assert logged_in_at + 8 * 3600 - 60 < login["expires"] <= logged_in_at + 8 * 3600 + 1
    assert kept == [], "logging out cleared the cookie"
    assert code not in hub_gateway.log() and state not in hub_gateway.log() and f"{SERVICE_PATH}/oauth_callback?[hidden]" in hub_gateway.log()

    # A copy of the cookie kept from before is no login either: the hub deleted the token its logout ended.
    def refused() -> bool:
        return http.get(f"{hub_gateway.url}/jobs", cookies={login["name"]: login["value"]}, timeout=30).status_code == 401

    wait_for(refused, 10, "the hub's answer about the token, cached for GATEWAY_AUTH_CACHE_SECONDS (1 s here), to be asked again")


def test_a_code_the_hub_did_not_issue_is_refused_with_a_401(hub: JupyterHubServer, hub_gateway: RunningGateway, http) -> None:
    served_through_the_hub(hub)
    # Through the hub, where the state cookie's path sends it.
    started = http.get(f"{through_the_hub(hub)}/", headers={"Accept": "text/html"}, allow_redirects=False)
    state = parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]
    forged = http.get(f"{through_the_hub(hub)}/oauth_callback", params={"code": "not-a-code-the-hub-issued", "state": state}, allow_redirects=False)
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "not_authenticated"
    assert "JupyterHub did not complete the login" in forged.json()["error"]["message"]
    assert "Set-Cookie" not in forged.headers, "no login cookie"


def refused_login(hub: JupyterHubServer, dask_gateway: DaskGatewayServer, token: str, log: Path, http) -> str:
    """What readiness says of a gateway whose own token Dask Gateway refuses."""
    # Beside the hub gateway, on a records prefix of its own: a gateway starting reads every record under its prefix.
    results_url = f"s3://{BUCKET}/hub-refused-login-{secrets.token_hex(4)}"
    gateway = start_gunicorn_gateway(gateway_environ(hub, dask_gateway, results_url, token), log_file=log, ready_timeout=0)

    def refusal() -> str:
        answer = http.get(f"{gateway.url}/readyz", timeout=30).json()
        said = "ready" if answer["status"] == "ready" else answer["message"]
        return said if "refused" in said or said == "ready" else ""

    try:
        return wait_for(refusal, 60, "readiness to name the refused login")
    finally:
        stop_process(gateway.process, timeout=60)


def test_readiness_says_when_the_hub_refuses_the_gateways_own_token(
    hub: JupyterHubServer, dask_gateway_server: DaskGatewayServer, audited_secrets: list[str], tmp_path: Path, http
) -> None:
    token, token_id = hub.new_token("gateway-bot")
    audited_secrets.append(token)
    hub.revoke("gateway-bot", token_id)

    said = refused_login(hub, dask_gateway_server, token, tmp_path / "gateway.log", http)

    assert "JupyterHub did not accept the token in JUPYTERHUB_API_TOKEN: it is revoked, expired or wrong; the deployment takes it from" in said, said


def test_a_token_that_may_not_use_dask_gateway_is_refused_too(
    hub: JupyterHubServer, dask_gateway_server: DaskGatewayServer, audited_secrets: list[str], tmp_path: Path, http
) -> None:
    """A token without access:services!service=dask-gateway: the hub knows it, Dask Gateway refuses it."""
    token, _ = hub.new_token("gateway-bot", scopes=["read:users:name!user=gateway-bot"])
    audited_secrets.append(token)
    said = refused_login(hub, dask_gateway_server, token, tmp_path / "gateway.log", http)

    # Not the message for a token the hub does not know, which mentions the scope too.
    assert "JupyterHub knows the token in JUPYTERHUB_API_TOKEN (user 'gateway-bot'), but it lacks access:services!service=dask-gateway" in said, said




# -- users kept apart: their own ids, private reads, the waiting room ---------------------


@pytest.fixture(scope="module")
def my_first_jobs(hub_gateway: RunningGateway, notebook_tokens: dict[str, str], http) -> dict[str, dict[str, Any]]:
    """alice's and bob's my-first-job, each submitted from their own notebook's token as the README's cell does."""
    jobs = {}
    for user in ("alice", "bob"):
        answer = http.get(f"{hub_gateway.url}/submit_job/my-first-job", headers=as_user(notebook_tokens[user]), timeout=300)
        assert answer.status_code == 200, answer.text
        jobs[user] = answer.json()
    return jobs


def test_alice_and_bob_each_own_my_first_job_a_repeat_is_the_same_job_and_another_seed_is_409_naming_it(
    hub_gateway: RunningGateway, notebook_tokens: dict[str, str], my_first_jobs: dict[str, dict[str, Any]], http
) -> None:
    alices, bobs = my_first_jobs["alice"], my_first_jobs["bob"]
    assert (alices["owner"], bobs["owner"], alices["status"], bobs["status"]) == ("alice", "bob", "done", "done")
    assert (alices["url"], bobs["url"]) == (f"s3://{BUCKET}/hub/.users/alice/my-first-job", f"s3://{BUCKET}/hub/.users/bob/my-first-job")
    assert_made_from_its_seed(alices["url"], alices["parameters"]["seed"])
    assert_made_from_its_seed(bobs["url"], bobs["parameters"]["seed"])

    alice = as_user(notebook_tokens["alice"])
    again = http.get(f"{hub_gateway.url}/submit_job/my-first-job", headers=alice, timeout=300)
    assert again.status_code == 200 and again.json() == alices, "the README's cell run again: the same job"
    other = (alices["parameters"]["seed"] + 1) % 2**63
    conflict = http.get(f"{hub_gateway.url}/submit_job/my-first-job?seed={other}", headers=alice, timeout=60)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "job_exists"
    assert conflict.json()["error"]["differences"] == {"seed": {"existing": alices["parameters"]["seed"], "requested": other}}
    assert http.get(f"{hub_gateway.url}/jobs/my-first-job", headers=as_user(notebook_tokens["bob"]), timeout=30).json() == bobs


def test_each_coarsens_their_own_my_first_job_and_anothers_is_no_source(
    hub_gateway: RunningGateway, notebook_tokens: dict[str, str], my_first_jobs: dict[str, dict[str, Any]], http
) -> None:
    alice, bob = as_user(notebook_tokens["alice"]), as_user(notebook_tokens["bob"])
    body = {"app": "coarsen", "job_id": "coarse", "parameters": {"source": "my-first-job", "factor": 10}}
    posted = http.post(f"{hub_gateway.url}/jobs", json=body, headers=alice, timeout=60)
    assert posted.status_code == 202, posted.text
    coarse = finished_job(lambda: http.get(f"{hub_gateway.url}/jobs/coarse", headers=alice, timeout=30).json(), 120, "alice's coarsen")
    assert (coarse["status"], coarse["owner"], coarse["url"]) == ("done", "alice", f"s3://{BUCKET}/hub/.users/alice/coarse")
    source = zarr.open_group(my_first_jobs["alice"]["url"], mode="r")["data"][:]
    expected = source.astype("float64").reshape(100, 10, 100, 10).mean(axis=(1, 3)).astype(source.dtype)
    np.testing.assert_array_equal(zarr.open_group(coarse["url"], mode="r")["data"][:], expected)
    # bob's "my-first-job" is his own: alice's job of another id is none of his, and says nothing of hers.
    refused = http.post(f"{hub_gateway.url}/jobs", json={**body, "parameters": {"source": "coarse", "factor": 2}}, headers=bob, timeout=60)
    assert refused.status_code == 404 and refused.json()["error"] == {"code": "source_not_found", "message": "source: you have no job 'coarse'"}


# Run in a notebook server's kernel: its result read through http_url with the server's own token, no storage key.
READ_IN_THE_KERNEL = """
import hashlib, os, requests, xarray as xr
assert not [name for name in os.environ if name.startswith("AWS_")], "a notebook holds no storage key"
headers = {"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"}
job = requests.get(f"{os.environ['GATEWAY_URL']}/jobs/my-first-job", headers=headers, timeout=60).json()
data = xr.open_zarr(job["http_url"], storage_options={"headers": headers})["data"]
print("read", job["owner"], data.shape, hashlib.sha256(data.values.tobytes()).hexdigest())
"""


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_each_reads_their_result_through_http_url_with_xarray_in_their_spawned_servers_kernel(
    hub: JupyterHubServer, alices_server: str, bobs_server: str, my_first_jobs: dict[str, dict[str, Any]], user: str, tmp_path: Path
) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(READ_IN_THE_KERNEL)])
    nbformat.write(notebook, tmp_path / "read.ipynb")

    (cell,) = run_notebook_on_server({"alice": alices_server, "bob": bobs_server}[user], hub.admin_token, tmp_path / "read.ipynb")

    stored = zarr.open_group(my_first_jobs[user]["url"], mode="r")["data"][:]
    assert outputs(cell).strip() == f"read {user} (1000, 1000) {hashlib.sha256(stored.tobytes()).hexdigest()}", outputs(cell)


def test_bobs_token_gets_404_and_no_token_401_on_every_object_under_alices_http_url(
    hub_gateway: RunningGateway, notebook_tokens: dict[str, str], tokens: dict[str, str], my_first_jobs: dict[str, dict[str, Any]],
    results_fs, http,
) -> None:
    alices = my_first_jobs["alice"]
    place = f"{BUCKET}/hub/.users/alice/my-first-job"
    keys = [path.removeprefix(f"{place}/") for path in results_fs.find(place)]
    assert "zarr.json" in keys and "data/c.0.0" in keys, keys
    for key in keys:
        url = f"{alices['http_url']}/{key}"
        for who, headers in (("bob", as_user(notebook_tokens["bob"])), ("bob, a range", {**as_user(notebook_tokens["bob"]), "Range": "bytes=-16"})):
            refused = http.get(url, headers=headers, timeout=30)
            assert (refused.status_code, refused.json()["error"]["code"]) == (404, "job_not_found"), (who, key)
        anonymous = http.get(url, timeout=30)
        assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "not_authenticated"), key
        assert http.get(url, headers=as_user(notebook_tokens["alice"]), timeout=30).content == results_fs.cat(f"{place}/{key}"), key
    carols = http.get(f"{alices['http_url']}/zarr.json", headers=as_user(tokens["carol"]), timeout=30)
    assert carols.status_code == 200, "an admin reads it through the same URL"


def test_bob_neither_follows_nor_cancels_alices_job_and_his_own_id_is_his_own_job(
    hub_gateway: RunningGateway, notebook_tokens: dict[str, str], tokens: dict[str, str], my_first_jobs: dict[str, dict[str, Any]], http
) -> None:
    bob = as_user(notebook_tokens["bob"])
    alices = f"{hub_gateway.url}/users/alice/jobs/my-first-job"
    refused = [http.get(f"{alices}/events", headers=bob, timeout=30), http.post(f"{alices}/cancel", headers=bob, timeout=30)]
    # Each stream gives every event kept of the job, its end last.
    *_, bobs_own = server_sent_events(http.get(f"{hub_gateway.url}/jobs/my-first-job/events", headers=bob, stream=True, timeout=30))
    *_, carols_view = server_sent_events(http.get(f"{alices}/events", headers=as_user(tokens["carol"]), stream=True, timeout=30))

    assert [(answer.status_code, answer.json()["error"]["code"]) for answer in refused] == [(404, "job_not_found")] * 2
    assert json.loads(bobs_own["data"])["owner"] == "bob" and json.loads(bobs_own["data"])["status"] == "done"
    assert json.loads(carols_view["data"]) == my_first_jobs["alice"], "an admin follows anyone's job"


@contextmanager
def gateways_workers_held(hub: JupyterHubServer, dask_gateway: DaskGatewayServer) -> Iterator[Any]:
    """The hub gateway's own Dask workers paused (helpers.workers_held), reached through Dask Gateway with the gateway's token.

    Its jobs wait on the workers until the block ends, however fast the machine. Those
    workers import the project's package but not the tests': helpers' functions travel by value.
    """
    auth = JupyterHubAuth(api_token=hub.service_tokens["science-gateway"])
    gateway = Gateway(dask_gateway.address, proxy_address=dask_gateway.proxy_address, auth=auth)
    (cluster,) = gateway.list_clusters()
    # The client is closed when it is collected: dask-gateway's close() fails when called a second time.
    with helpers_by_value(), gateway.connect(cluster.name, shutdown_on_close=False) as connected, connected.get_client() as client, workers_held(client):
        yield client


def waiting_callers(gateway: RunningGateway) -> int:
    """The gateway's gateway_waiting_callers gauge: places taken in its waiting room."""
    (line,) = [line for line in requests.get(f"{gateway.url}/metrics", timeout=30).text.splitlines() if line.startswith("gateway_waiting_callers ")]
    return int(float(line.split()[1]))


def test_alices_24_waiting_calls_take_her_share_alone_and_delay_bobs_one_job_by_at_most_one_job(
    hub: JupyterHubServer, hub_gateway: RunningGateway, dask_gateway_server: DaskGatewayServer, notebook_tokens: dict[str, str], http
) -> None:
    url, run = hub_gateway.url, secrets.token_hex(3)
    alice, bob = as_user(notebook_tokens["alice"]), as_user(notebook_tokens["bob"])

    def wait_on(headers: dict[str, str], job_id: str) -> requests.Response:
        return requests.get(f"{url}/submit_job/{job_id}?{SMALL}", headers=headers, timeout=600)

    with ThreadPoolExecutor(25) as pool:
        with gateways_workers_held(hub, dask_gateway_server):
            alices = [pool.submit(wait_on, alice, f"burst-{run}-{index}") for index in range(24)]
            # Her share of the waiting room (GATEWAY_MAX_WAITING_CALLERS_PER_OWNER, 16) waits; the rest are refused at once.
            wait_for(lambda: sum(call.done() for call in alices) == 8 and waiting_callers(hub_gateway) == 16, 120, "alice's share to be taken")
            refused_calls = [call for call in alices if call.done()]
            bobs = pool.submit(wait_on, bob, f"burst-{run}-bob")
            wait_for(lambda: waiting_callers(hub_gateway) == 17, 60, "bob's call to wait beside hers")
        refused = [call.result() for call in refused_calls]
        answers = [call.result(timeout=300) for call in alices if call not in refused_calls] + [bobs.result(timeout=300)]

    assert [(answer.status_code, answer.json()["error"]["code"]) for answer in refused] == [(429, "too_many_waiting_callers_of_owner")] * 8
    assert all(answer.headers["Retry-After"] and answer.json()["error"]["setting"] == "GATEWAY_MAX_WAITING_CALLERS_PER_OWNER" for answer in refused)
    assert [answer.status_code for answer in answers] == [200] * 17 and all(answer.json()["status"] == "done" for answer in answers)
    bobs_job = answers[-1].json()
    hers = [job for job in http.get(f"{url}/jobs?limit=1000", headers=alice, timeout=30).json()["jobs"] if job["job_id"].startswith(f"burst-{run}-")]
    assert len(hers) == 16
    queued_with_bob = [job for job in hers if job["started_at"] > bobs_job["submitted_at"]]
    assert len(queued_with_bob) >= 2, "her burst was still queued when bob's job was: the set-up did what it must"
    # Owners take turns: at most one more of hers starts before his.
    assert len([job for job in queued_with_bob if job["started_at"] < bobs_job["started_at"]]) <= 1, (bobs_job, queued_with_bob)


def open_waiting_call(gateway: RunningGateway, token: str, job_id: str) -> socket.socket:
    """A waiting /submit_job on a connection of its own, which the test can close as a notebook cell that is interrupted does."""
    address = urlsplit(gateway.url)
    connection = socket.create_connection((address.hostname, address.port), timeout=30)
    request = f"GET /submit_job/{job_id}?{SMALL} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: token {token}\r\n\r\n"
    connection.sendall(request.encode())
    return connection


def test_a_waiting_caller_who_hangs_up_frees_its_place_at_once_and_its_job_still_runs(
    hub: JupyterHubServer, hub_gateway: RunningGateway, dask_gateway_server: DaskGatewayServer, notebook_tokens: dict[str, str], http
) -> None:
    token, run = notebook_tokens["alice"], secrets.token_hex(3)
    connections: list[socket.socket] = []
    try:
        with gateways_workers_held(hub, dask_gateway_server):
            connections += [open_waiting_call(hub_gateway, token, f"hang-{run}-{index}") for index in range(16)]
            wait_for(lambda: waiting_callers(hub_gateway) == 16, 60, "alice's 16 places to be taken")
            full = http.get(f"{hub_gateway.url}/submit_job/hang-{run}-16?{SMALL}", headers=as_user(token), timeout=60)
            assert (full.status_code, full.json()["error"]["code"]) == (429, "too_many_waiting_callers_of_owner")

            connections.pop().close()
            # Noticed as soon as the closed connection is readable; the bound only reports a failure instead of hanging.
            # Before, the place stayed taken until the job ended, which the paused workers never let happen here.
            wait_for(lambda: waiting_callers(hub_gateway) == 15, 10, "the place of the caller who hung up to come free")
            connections.append(open_waiting_call(hub_gateway, token, f"hang-{run}-16"))
            wait_for(lambda: waiting_callers(hub_gateway) == 16, 60, "a new caller to take that place")
    finally:
        for connection in connections:
            connection.close()
    def all_done() -> list[dict[str, Any]]:
        found = [http.get(f"{hub_gateway.url}/jobs/hang-{run}-{index}", headers=as_user(token), timeout=30).json() for index in range(17)]
        return found if all(record["status"] == "done" for record in found) else []

    finished = wait_for(all_done, 300, "every job, its caller gone or not, to run")
    assert [record["owner"] for record in finished] == ["alice"] * 17


def test_a_room_of_200_users_each_running_the_readmes_cell_at_once_all_get_done_while_the_probes_answer(
    hub: JupyterHubServer, hub_gateway: RunningGateway, audited_secrets: list[str], measured
) -> None:
    """The README's cell (a waiting /submit_job/my-first-job) by 200 users at once, with tokens scoped as notebooks' are,
    while the kubelet's probes poll the probe port as deploy_gateway.yaml sends them."""
    users = [f"room-{index:03d}" for index in range(200)]
    hub.create_users(users)
    tokens = {user: hub.new_token(user, scopes=["access:services!service=science-gateway"])[0] for user in users}
    audited_secrets.extend(tokens.values())
    kubelet_timeout = kubelets_probe_timeout()
    # Every probe sent, answered or not: (path, seconds, status, or the error of one that got no answer).
    probes: list[tuple[str, float, int | str]] = []
    prober_failures: list[BaseException] = []
    stop_probing = threading.Event()

    def probe() -> None:
        try:
            with requests.Session() as session:
                while not stop_probing.is_set():
                    for path in ("/healthz", "/readyz"):
                        started = time.monotonic()
                        try:
                            # As the kubelet waits: no longer than its timeout.
                            answer: int | str = session.get(f"{hub_gateway.probe_url}{path}", timeout=kubelet_timeout).status_code
                        except requests.RequestException as exc:
                            answer = f"{type(exc).__name__}: {exc}"
                        probes.append((path, time.monotonic() - started, answer))
                    stop_probing.wait(0.5)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's own thread to fail on
            prober_failures.append(exc)

    def readmes_cell(user: str) -> tuple[requests.Response, float]:
        answer = requests.get(f"{hub_gateway.url}/submit_job/my-first-job", headers=as_user(tokens[user]), timeout=600)
        return answer, time.monotonic()

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(200) as pool:
            answers = dict(zip(users, pool.map(readmes_cell, users), strict=True))
    finally:
        stop_probing.set()
        prober.join()

    assert not prober_failures, prober_failures
    failed = {user: (answer.status_code, answer.text[:200]) for user, (answer, _) in answers.items() if answer.status_code != 200}
    assert not failed, failed
    assert [(answer.json()["status"], answer.json()["owner"]) for answer, _ in answers.values()] == [("done", user) for user in users]
    for user in users[::20]:
        assert_made_from_its_seed(answers[user][0].json()["url"], answers[user][0].json()["parameters"]["seed"])
    assert probes, "the probes ran while the room waited"
    assert [answer for _, _, answer in probes] == [200] * len(probes), [probe for probe in probes if probe[2] != 200]
    # A timing that must be asserted: a probe slower than the kubelet's timeout fails it, which is the behaviour bounded here.
    # (Under 1 s is make bench's target for this room; a shared CI machine once took 1.8 s for one.)
    slowest = max(seconds for _, seconds, _ in probes)
    assert slowest < kubelet_timeout, sorted(probes, key=lambda probe: -probe[1])[:5]
    last = max(finished for _, finished in answers.values()) - started
    p99 = float(np.percentile([seconds for _, seconds, _ in probes], 99))
    measured(f"room of 200 users: 200 of 200 done, the last after {last:.1f} s; {len(probes)} probes, p99 {p99:.3f} s, slowest {slowest:.3f} s")


# -- the job's event stream through the hub's proxy ----------------------------------------


class EventStream:
    """A job's Server-Sent Events read as they arrive, on a connection of its own that the test may cut: (id, record) each."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.response = requests.get(url, headers={**headers, "Accept": "text/event-stream"}, stream=True, timeout=(30, 120))
        self.events: list[tuple[int, dict[str, Any]]] = []
        self._pending = ""

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Each event as it comes, until the gateway ends the stream."""
        fields: dict[str, str] = {}
        for chunk in self.response.iter_content(chunk_size=None, decode_unicode=True):
            self._pending += chunk
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                if line == "":
                    if fields.get("event") == "job":
                        event = (int(fields["id"]), json.loads(fields["data"]))
                        self.events.append(event)
                        yield event
                    fields = {}
                elif not line.startswith(":"):  # a comment keeps the connection alive
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")

    def read_to_the_end(self, failures: list[BaseException]) -> None:
        """In a thread of its own: every event, its failure recorded for the test's own thread."""
        try:
            for _ in self:
                pass
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's own thread to fail on
            failures.append(exc)

    def ids(self) -> list[int]:
        return [event_id for event_id, _ in self.events]


def test_the_event_stream_through_the_hubs_proxy_is_live_and_resumes_after_a_cut_with_no_id_lost_or_repeated(
    hub: JupyterHubServer, hub_gateway: RunningGateway, dask_gateway_server: DaskGatewayServer, tokens: dict[str, str], http
) -> None:
    """configurable-http-proxy between a client and the stream: events arrive while the job is held on paused workers
    (before it can end), and a connection cut then resumed with Last-Event-ID gets what an uncut stream beside it gets."""
    served_through_the_hub(hub)
    service, alice, job_id = through_the_hub(hub), as_user(tokens["alice"]), f"streamed-{secrets.token_hex(3)}"
    events_url = f"{service}/jobs/{job_id}/events"
    failures: list[BaseException] = []
    with gateways_workers_held(hub, dask_gateway_server) as client:
        body = {"app": "random-array", "job_id": job_id, "parameters": {"shape": [400, 400], "chunks": [100, 100]}}
        assert http.post(f"{service}/jobs", json=body, headers=alice, timeout=60).status_code == 202
        wait_for_the_tasks(client, job_id)
        uncut = EventStream(events_url, alice)
        assert uncut.response.status_code == 200 and uncut.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        beside = threading.Thread(target=uncut.read_to_the_end, args=(failures,))
        beside.start()
        cut = EventStream(events_url, alice)
        for _, record in cut:
            if record["status"] == "running":
                break
        # Received while the workers are paused: the job cannot have ended, so the event came as it ran.
        assert http.get(f"{service}/jobs/{job_id}", headers=alice, timeout=30).json()["status"] == "running"
        wait_for(lambda: "running" in [record["status"] for _, record in uncut.events], 60, "the uncut stream's running event, the job held")
        cut.response.close()
        resumed = EventStream(events_url, {**alice, "Last-Event-ID": str(cut.ids()[-1])})
        assert resumed.response.status_code == 200
        after = threading.Thread(target=resumed.read_to_the_end, args=(failures,))
        after.start()
    # The workers go on: both streams run to the job's end, which closes them.
    beside.join(timeout=180)
    after.join(timeout=180)
    assert not beside.is_alive() and not after.is_alive(), "the gateway closes each stream after the final event"
    assert not failures, failures

    assert cut.ids() + resumed.ids() == uncut.ids(), "no id lost or repeated across the cut"
    assert uncut.ids() == sorted(set(uncut.ids())), "ids increase"
    statuses = [record["status"] for _, record in uncut.events]
    assert statuses[-1] == "done" and statuses.count("done") == 1 and "running" in statuses
    assert uncut.events[-1][1] == http.get(f"{service}/jobs/{job_id}", headers=alice, timeout=30).json(), "each event is the job's record"
    assert uncut.events[-1][1]["http_url"].startswith(f"{service}/"), "made under the prefix the stream came by"
    finished = http.get(events_url, headers={**alice, "Last-Event-ID": str(uncut.ids()[-1])}, timeout=30)
    assert finished.status_code == 204, "past the final event: nothing more, and an EventSource stops"
