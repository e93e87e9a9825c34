"""Authentication with a real JupyterHub: notebooks' and callers' tokens, and the gateway's own login to Dask Gateway.

The whole chain runs on real processes, the hub configured from
jupyterhub_values.yaml: alice's notebook server, spawned by the hub, runs the
example notebook with the token the hub minted for it -> the gateway -> the
hub's check (jupyterhub's service-auth helper); the gateway's service token ->
dask-gateway-server -> the hub's check (its JupyterHub authenticator).
Tokens made through the hub's REST API serve the tests of owners and refusals.
Notebooks hold the reader's S3 keys, of a read-only server on the gateway's
buckets, as the read-only Secret gives them.
"""

import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import nbformat
import pytest
import requests
import yaml
from dask_gateway import Gateway, JupyterHubAuth
from playwright.sync_api import Browser, expect

from conftest import BUCKET
from devtools.gunicorn_gateway import RunningGateway, start_gunicorn_gateway
from devtools.local_s3 import LocalS3
from devtools.processes import free_port, stop_process
from helpers import assert_made_from_its_seed, descendants, outputs, run_notebook_on_server, wait_for
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


def hub_token() -> str:
    # The audit of secrets recognises this form (test_secrets_audit.py).
    return f"test-hub-token-{secrets.token_hex(16)}"


@pytest.fixture(scope="module")
def hub_gateway_port() -> int:
    """Chosen before the hub starts: the hub sends browsers back to the gateway's OAuth callback on it."""
    return free_port()


@pytest.fixture(scope="module")
def dask_gateway_ports() -> tuple[int, int]:
    """Chosen before the hub starts: notebooks are told where Dask Gateway is."""
    return free_port(), free_port()


def notebook_environment(gateway_url: str, dask_gateway_ports: tuple[int, int], s3_reader: LocalS3) -> dict[str, str]:
    """singleuser.extraEnv of jupyterhub_values.yaml, each variable pointed at this machine's stand-in."""
    api_port, proxy_port = dask_gateway_ports
    reader = s3_reader.environ()
    return {
        "GATEWAY_URL": gateway_url,
        "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{api_port}",
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://127.0.0.1:{proxy_port}",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        **{name: reader[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")},
    }


def start_hub(workdir: Path, gateway_port: int, dask_gateway_ports: tuple[int, int], s3_reader: LocalS3, **options) -> JupyterHubServer:
    services = {"science-gateway": hub_token(), "dask-gateway": hub_token()}
    return start_jupyterhub(
        workdir, USERS, {ADMINS: ["carol"]}, services, admin_token=hub_token(),
        notebook_environment=notebook_environment(f"http://127.0.0.1:{gateway_port}", dask_gateway_ports, s3_reader),
        local_environment={"AWS_RESPONSE_CHECKSUM_VALIDATION": s3_reader.environ()["AWS_RESPONSE_CHECKSUM_VALIDATION"]},
        **options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, hub_gateway_port: int, dask_gateway_ports: tuple[int, int], s3_reader: LocalS3
) -> Iterator[JupyterHubServer]:
    server = start_hub(
        tmp_path_factory.mktemp("jupyterhub"), hub_gateway_port, dask_gateway_ports, s3_reader,
        oauth_redirects={"science-gateway": f"http://127.0.0.1:{hub_gateway_port}/oauth_callback"},
    )  # fmt: skip
    yield server
    stop_process(server.process, timeout=60)


@pytest.fixture(scope="module")
def alices_server(hub: JupyterHubServer) -> Iterator[str]:
    """alice's notebook server, spawned by the hub as her home page spawns it; its URL."""
    yield hub.start_server("alice")
    hub.stop_server("alice")


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
        tmp_path_factory.mktemp("dask-gateway-hub"), {"awsconfig": s3.environ()}, ports=dask_gateway_ports,
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
    hub: JupyterHubServer, dask_gateway_server: DaskGatewayServer, hub_gateway_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    environ = gateway_environ(
        hub, dask_gateway_server, f"s3://{BUCKET}/hub", hub.service_tokens["science-gateway"],
        # Browsers log in through the hub, as its proxy serves it to them.
        JUPYTERHUB_OAUTH_CALLBACK_URL=f"http://127.0.0.1:{hub_gateway_port}/oauth_callback",
        JUPYTERHUB_HOST=hub.public_url,
    )  # fmt: skip
    gateway = start_gunicorn_gateway(environ, port=hub_gateway_port, log_file=tmp_path_factory.mktemp("hub-gateway") / "gateway.log")
    yield gateway
    stop_process(gateway.process, timeout=60)


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


def test_probes_and_metrics_need_no_token_and_everything_else_does(hub_gateway: RunningGateway, tokens: dict[str, str], http) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http.get(f"{hub_gateway.url}{path}", timeout=30).status_code == 200, path

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


def test_each_user_sees_only_their_own_jobs_and_an_admin_sees_all(hub_gateway: RunningGateway, tokens: dict[str, str], http) -> None:
    url = hub_gateway.url
    alice, bob, carol = as_user(tokens["alice"]), as_user(tokens["bob"]), as_user(tokens["carol"])
    mine = http.get(f"{url}/submit_job/alices-run?{SMALL}", headers=alice, timeout=60).json()
    theirs = http.get(f"{url}/submit_job/bobs-run?{SMALL}", headers=bob, timeout=60).json()
    assert (mine["owner"], theirs["owner"]) == ("alice", "bob")

    listed = {job["job_id"] for job in http.get(f"{url}/jobs", headers=alice, timeout=30).json()["jobs"]}
    assert "alices-run" in listed and "bobs-run" not in listed
    for method, path in (("GET", "/jobs/bobs-run"), ("GET", "/jobs/bobs-run/preview.png"), ("DELETE", "/jobs/bobs-run")):
        response = http.request(method, f"{url}{path}", headers=alice, timeout=60)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found", (method, path)
    taken = http.get(f"{url}/submit_job/bobs-run?{SMALL}", headers=alice, timeout=60)
    assert taken.status_code == 404 and taken.json()["error"]["code"] == "job_not_found", "as bob's job is everywhere else"
    assert "url" not in taken.json()["error"], "neither where nor whose"
    assert "bob" not in taken.json()["error"]["message"].replace("bobs-run", "")

    everyone = {job["job_id"]: job["owner"] for job in http.get(f"{url}/jobs", headers=carol, timeout=30).json()["jobs"]}
    assert everyone["alices-run"] == "alice" and everyone["bobs-run"] == "bob"
    assert http.get(f"{url}/jobs/bobs-run/preview.png?size=thumbnail", headers=carol, timeout=60).status_code == 200
    assert http.delete(f"{url}/jobs/bobs-run", headers=bob, timeout=60).status_code == 204


def test_a_user_cancels_only_their_own_running_job(hub_gateway: RunningGateway, tokens: dict[str, str], http) -> None:
    url = hub_gateway.url
    alice, bob = as_user(tokens["alice"]), as_user(tokens["bob"])
    big = {"job_id": "alices-big-run", "shape": [10000, 10000], "chunks": [1000, 1000]}
    assert http.post(f"{url}/jobs", json=big, headers=alice, timeout=30).status_code == 202

    assert http.delete(f"{url}/jobs/alices-big-run", headers=bob, timeout=60).status_code == 404
    cancelled = http.delete(f"{url}/jobs/alices-big-run", headers=alice, timeout=60)

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_the_notebook_runs_on_alices_hub_spawned_server_with_the_token_the_hub_minted_for_it(
    hub_gateway: RunningGateway, alices_server: str, hub: JupyterHubServer, tokens: dict[str, str], http
) -> None:
    cells = run_notebook_on_server(alices_server, hub.admin_token)

    _, submitted, watched, opened_with_xarray, _, plotted = cells
    assert "'queued'" in outputs(submitted) or "'running'" in outputs(submitted), outputs(submitted)
    assert "'done'" in outputs(watched), outputs(watched)
    assert "(y: 1000, x: 1000)" in outputs(opened_with_xarray), outputs(opened_with_xarray)
    assert [output for output in plotted.outputs if "image/png" in output.get("data", {})], "the plot cell shows its image"
    job_id = outputs(submitted).split("'")[1]
    record = http.get(f"{hub_gateway.url}/jobs/{job_id}", headers=as_user(tokens["alice"]), timeout=30).json()
    assert record["owner"] == "alice" and record["status"] == "done"


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


# The forms of the tests' secrets (test_secrets_audit.py): the cell names any variable holding one.
USERS_OWN_CLUSTER = """
import os, re
from dask_gateway import Gateway

gateway = Gateway()
cluster = gateway.new_cluster()
cluster.scale(1)
client = cluster.get_client()
client.wait_for_workers(1, timeout=120)
environments = client.run(lambda: dict(os.environ))
secret = re.compile(r"(?:test|fault)-secret-|test-hub-token-")
print("secret values:", sorted(name for env in environments.values() for name, value in env.items() if secret.search(value)))
print("variables:", sorted(name for env in environments.values() for name in env))
listed = [report.name for report in gateway.list_clusters()]
client.close()
cluster.shutdown()
assert cluster.name in listed, listed
print(f"cluster {cluster.name} started, listed, stopped")
"""


@pytest.fixture(scope="module")
def hub_with_default_server_role(
    tmp_path_factory: pytest.TempPathFactory, dask_gateway_ports: tuple[int, int], s3_reader: LocalS3
) -> Iterator[tuple[JupyterHubServer, int]]:
    """A hub configured from jupyterhub_values.yaml less its `server` role, so notebooks' tokens get JupyterHub's default."""
    values = yaml.safe_load(HUB_VALUES.read_text())
    del values["hub"]["loadRoles"]["server"]
    gateway_port = free_port()
    server = start_hub(tmp_path_factory.mktemp("jupyterhub-default-server-role"), gateway_port, dask_gateway_ports, s3_reader, values=values)
    yield server, gateway_port
    stop_process(server.process, timeout=60)


def test_without_the_server_role_the_notebook_is_told_which_scope_and_setting_it_lacks(
    hub_with_default_server_role: tuple[JupyterHubServer, int], dask_gateway_server: DaskGatewayServer, tmp_path: Path
) -> None:
    hub, gateway_port = hub_with_default_server_role
    environ = gateway_environ(hub, dask_gateway_server, f"s3://{BUCKET}/hub", hub.service_tokens["science-gateway"])
    # Its own cluster does not matter here: Dask Gateway checks tokens with the other hub.
    gateway = start_gunicorn_gateway(environ, port=gateway_port, log_file=tmp_path / "gateway.log", ready_timeout=0)
    try:
        server = hub.start_server("alice")
        _, submitted, *rest = run_notebook_on_server(server, hub.admin_token)
        hub.stop_server("alice")
    finally:
        stop_process(gateway.process, timeout=60)

    said = outputs(submitted)
    assert "RuntimeError: the gateway answered 403: alice's token does not grant access:services!service=science-gateway" in said, said
    assert "`server` role" in said and "hub.loadRoles.server.scopes" in said
    assert not any(cell.outputs for cell in rest), "the notebook stops at the refusal"


def test_results_go_under_the_users_prefix_when_asked(
    hub: JupyterHubServer, dask_gateway_server: DaskGatewayServer, tokens: dict[str, str], results_fs, tmp_path: Path, http
) -> None:
    environ = gateway_environ(
        hub, dask_gateway_server, f"s3://{BUCKET}/per-user", hub.service_tokens["science-gateway"], GATEWAY_RESULTS_PER_USER="true"
    )
    gateway = start_gunicorn_gateway(environ, log_file=tmp_path / "gateway.log")
    try:
        job = http.get(f"{gateway.url}/submit_job/in-my-folder?{SMALL}", headers=as_user(tokens["alice"]), timeout=60).json()
    finally:
        stop_process(gateway.process, timeout=60)

    assert job["url"] == f"s3://{BUCKET}/per-user/.users/alice/in-my-folder"
    assert results_fs.exists(f"{BUCKET}/per-user/.users/alice/in-my-folder/zarr.json")
    assert not results_fs.exists(f"{BUCKET}/per-user/in-my-folder")


def test_a_browser_logs_in_through_the_hub_and_submits_from_the_page(
    hub_gateway: RunningGateway, browser: Browser, tokens: dict[str, str], http
) -> None:
    context = browser.new_context(base_url=hub_gateway.url)
    page = context.new_page()
    try:
        page.goto("/")
        expect(page.locator("#username_input")).to_be_visible()  # the hub's login form
        page.fill("#username_input", "alice")
        page.fill("#password_input", "any password: the test hub's dummy authenticator")
        page.click("#login_submit")
        expect(page).to_have_title("Science gateway: jobs")
        assert page.url.startswith(hub_gateway.url), "back at the gateway"

        page.fill("input[name=job_id]", "from-alices-browser")
        page.fill("input[name=shape]", "100,100")
        page.click("button[type=submit]")
        row = page.locator('#jobs tbody tr[data-job-id="from-alices-browser"]')
        expect(row).to_have_attribute("data-status", "done", timeout=60_000)
        expect(row.locator(".owner")).to_have_text("by alice")
        cookies = {cookie["name"]: cookie for cookie in context.cookies(hub_gateway.url)}
        # The login cookie is no token for a GET that makes a job, as a link from another site could.
        by_link = page.request.get(f"{hub_gateway.url}/submit_job/from-a-link?shape=100,100")
        assert by_link.status == 401

        # Another site on this host (another port is the same site, so the Lax cookie goes along)
        # submits an empty form to the gateway as alice's browser.
        other_site = f"http://127.0.0.1:{free_port()}/"
        form = f'<form method="post" action="{hub_gateway.url}/jobs"></form><script>document.forms[0].submit()</script>'
        page.route(other_site, lambda route: route.fulfill(body=form, content_type="text/html"))
        page.goto(other_site)
        expect(page.locator("body")).to_contain_text("cross_site_request")
    finally:
        context.close()

    alices = http.get(f"{hub_gateway.url}/jobs", headers=as_user(tokens["alice"]), timeout=30).json()["jobs"]
    record = next(job for job in alices if job["job_id"] == "from-alices-browser")
    assert record["owner"] == "alice"
    assert not [job for job in alices if job["submitted_at"] > record["submitted_at"]], "the other site's form made no job"
    assert cookies["service-science-gateway"]["httpOnly"], "the page's script never sees the token"


def test_a_code_the_hub_did_not_issue_is_refused_with_a_401(hub_gateway: RunningGateway, http) -> None:
    started = http.get(f"{hub_gateway.url}/", headers={"Accept": "text/html"}, allow_redirects=False)
    state = parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]
    forged = http.get(f"{hub_gateway.url}/oauth_callback", params={"code": "not-a-code-the-hub-issued", "state": state}, allow_redirects=False)
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "not_authenticated"
    assert "JupyterHub did not complete the login" in forged.json()["error"]["message"]
    assert "Set-Cookie" not in forged.headers, "no login cookie"


def refused_login(hub: JupyterHubServer, dask_gateway: DaskGatewayServer, token: str, log: Path, http) -> str:
    """What readiness says of a gateway whose own token Dask Gateway refuses."""
    gateway = start_gunicorn_gateway(gateway_environ(hub, dask_gateway, f"s3://{BUCKET}/hub", token), log_file=log, ready_timeout=0)

    def refusal() -> str:
        answer = http.get(f"{gateway.url}/readyz", timeout=30).json()
        said = "ready" if answer.get("status") == "ready" else answer["error"]["message"]
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


def test_a_workshop_of_200_callers_from_three_users_never_starves_the_probes(
    hub_gateway: RunningGateway, tokens: dict[str, str], measured
) -> None:
    """Waiting /submit_job, POST /jobs with polling, GET /jobs and pictures at once, while the kubelet's probes poll
    (on the probe port, as deploy_gateway.yaml sends them)."""
    url = hub_gateway.url
    owners = ["alice", "bob", "carol"]
    run = secrets.token_hex(3)
    with requests.Session() as session:
        for owner in owners:
            shown = session.get(f"{url}/submit_job/workshop-{run}-{owner}-picture?{SMALL}", headers=as_user(tokens[owner]), timeout=120)
            assert shown.status_code == 200, shown.text

    probes: list[tuple[str, float, int]] = []
    stop_probing = threading.Event()

    def probe() -> None:
        with requests.Session() as session:
            while not stop_probing.is_set():
                for path in ("/healthz", "/readyz"):
                    started = time.monotonic()
                    status = session.get(f"{hub_gateway.probe_url}{path}", timeout=10).status_code
                    probes.append((path, time.monotonic() - started, status))
                stop_probing.wait(0.5)

    def caller(index: int) -> list[tuple[str, requests.Response, int]]:
        """What one caller did: (kind, response, seed) for each request that could be refused or accepted."""
        owner = owners[index % 3]
        headers = as_user(tokens[owner])
        seed = 1000 + index
        with requests.Session() as session:
            kind = ("wait", "post", "list", "picture")[index % 4]
            if kind == "wait":
                return [(kind, session.get(f"{url}/submit_job/workshop-{run}-{index}?seed={seed}&{SMALL}", headers=headers, timeout=600), seed)]
            if kind == "post":
                body = {"job_id": f"workshop-{run}-{index}", "seed": seed, "shape": [100, 100]}
                posted = session.post(f"{url}/jobs", json=body, headers=headers, timeout=60)
                # As the example notebook does: poll the job's Location until it is finished.
                location = f"{url}{posted.headers.get('Location', '')}"
                while posted.status_code == 202 and session.get(location, headers=headers, timeout=60).json()["status"] in ("queued", "running"):
                    time.sleep(0.5)
                return [(kind, posted, seed)]
            if kind == "list":
                return [(kind, session.get(f"{url}/jobs?limit=50", headers=headers, timeout=60), seed)]
            picture = f"{url}/jobs/workshop-{run}-{owner}-picture/preview.png?size=thumbnail"
            return [(kind, session.get(picture, headers=headers, timeout=120), seed)]

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(200) as pool:
            answers = [answer for answers in pool.map(caller, range(200)) for answer in answers]
        accepted = [(response.json(), seed) for kind, response, seed in answers if response.status_code in (200, 202) and kind in ("wait", "post")]

        def finished(job: dict) -> dict:
            headers = as_user(tokens[job["owner"]])
            return wait_for(
                lambda: (record := requests.get(f"{url}/jobs/{job['job_id']}", headers=headers, timeout=30).json())["status"] in FINISHED and record,
                300, f"job {job['job_id']}",
            )  # fmt: skip

        jobs = [(finished(job), seed) for job, seed in accepted]
    finally:
        stop_probing.set()
        prober.join()

    refused = [response for _, response, _ in answers if response.status_code == 429]
    others = [(kind, response.status_code, response.text[:200]) for kind, response, _ in answers if response.status_code not in (200, 202, 429)]
    assert not others, others
    assert all(int(response.headers["Retry-After"]) > 0 and response.json()["error"]["setting"].startswith("GATEWAY_") for response in refused)
    assert all(job["status"] == "done" for job, _ in jobs), [job for job, _ in jobs if job["status"] != "done"][:3]
    for job, seed in jobs:
        assert_made_from_its_seed(job["url"], seed)
    slowest = max(seconds for _, seconds, _ in probes)
    assert all(status == 200 for _, _, status in probes) and slowest < 1.0, sorted(probes, key=lambda probe: -probe[1])[:5]
    measured(
        f"workshop: 200 callers of 3 users, {len(jobs)} jobs accepted and done, {len(refused)} refused with 429; "
        f"{len(probes)} probes, the slowest {slowest:.3f} s"
    )
