"""The browser login's defences, through Flask's test client: a hub that cannot be reached is enough for all of them."""

import base64
import gc
import json
import socket
import time
import tracemalloc
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from devtools.processes import free_port
from gateway import services
from helpers import running_app
from science_gateway.browser_login import safe_return_path

HTML = {"Accept": "text/html"}


def auth_app(tmp_path_factory: pytest.TempPathFactory, callback: str) -> Iterator[Flask]:
    """A gateway that logs browsers in through a hub, with neither hub nor Dask Gateway answering."""
    environ = {
        "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_RESULTS_URL": str(tmp_path_factory.mktemp("results")),
        "GATEWAY_AUTH": "jupyterhub",
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api",
        "JUPYTERHUB_API_TOKEN": "the-gateways-own-token",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": callback,
        "JUPYTERHUB_HOST": "https://hub.example.org",
    }
    with running_app(environ) as app:
        yield app


@pytest.fixture(scope="module")
def https_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    yield from auth_app(tmp_path_factory, "https://gateway.example.org/oauth_callback")


@pytest.fixture(scope="module")
def http_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    yield from auth_app(tmp_path_factory, "http://127.0.0.1:8000/oauth_callback")


@pytest.fixture
def http(https_app: Flask) -> FlaskClient:
    return https_app.test_client()


@pytest.mark.parametrize(
    "path",
    ["/\t/evil.example", "/\n/evil.example", "/\\evil.example", "//evil.example", "https://evil.example/", "javascript:alert(1)", "", "jobs"],
)
def test_a_return_path_that_could_leave_the_service_becomes_the_page(path: str) -> None:
    assert safe_return_path(path) == "/"


@pytest.mark.parametrize("path", ["/", "/?page=2", "/jobs/run-7"])
def test_a_path_of_the_service_is_kept(path: str) -> None:
    assert safe_return_path(path) == path


def state_of(response) -> dict:
    state = response.headers["Location"].split("state=")[1]
    return json.loads(base64.urlsafe_b64decode(state))


def test_only_the_page_sends_a_browser_to_log_in_and_only_back_to_itself(http: FlaskClient, https_app: Flask) -> None:
    login = http.get("/", headers=HTML)
    assert login.status_code == 302 and login.headers["Location"].startswith("https://hub.example.org/hub/api/oauth2/authorize?")
    assert state_of(login)["next"] == "/"
    for path in ("/%09/evil.example", "/jobs", "/openapi.json", "/jobs/run-7/preview.png"):
        response = http.get(path, headers=HTML)
        assert response.status_code == 401 and response.json["error"]["code"] == "not_authenticated", path
    _, state = services(https_app).browser_login.start("/\t/evil.example")
    assert json.loads(base64.urlsafe_b64decode(state))["next"] == "/"


def test_with_an_https_callback_both_cookies_are_host_only_secure_and_http_only(http: FlaskClient) -> None:
    cookie = http.get("/", headers=HTML).headers["Set-Cookie"]
    assert cookie.startswith("__Host-service-science-gateway-oauth-state=")
    assert {"Secure", "HttpOnly", "Path=/", "SameSite=Lax"} <= {part.strip() for part in cookie.split(";")}
    assert "Domain=" not in cookie


def test_with_an_http_callback_the_cookie_cannot_be_secure_nor_prefixed(http_app: Flask) -> None:
    cookie = http_app.test_client().get("/", headers={**HTML, "X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    assert cookie.startswith("service-science-gateway-oauth-state=") and "Secure" not in cookie


def test_a_login_that_did_not_start_here_is_refused(http: FlaskClient) -> None:
    state = http.get("/", headers=HTML).headers["Location"].split("state=")[1]
    forged = http.get(f"/oauth_callback?code=c&state={state}x")
    assert forged.status_code == 401 and "did not come back as it left" in forged.json["error"]["message"]


def test_a_login_the_hub_cannot_complete_is_unavailable_and_names_no_host_of_ours(http: FlaskClient) -> None:
    state = http.get("/", headers=HTML).headers["Location"].split("state=")[1]
    unanswered = http.get(f"/oauth_callback?code=c&state={state}")
    assert unanswered.status_code == 503 and unanswered.json["error"]["code"] == "auth_unavailable"
    assert "cannot complete the login with JupyterHub" in unanswered.json["error"]["message"]
    assert socket.gethostname() not in unanswered.json["error"]["message"]


def test_a_cookie_the_gateway_did_not_encrypt_is_no_login(http: FlaskClient, https_app: Flask) -> None:
    login = services(https_app).browser_login
    http.set_cookie(login.token_cookie, "a-raw-hub-token", domain="localhost")
    assert http.get("/jobs").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://gateway.example.org:8443"}],
)
def test_a_request_another_site_made_does_not_carry_the_login(http: FlaskClient, https_app: Flask, headers: dict) -> None:
    login = services(https_app).browser_login
    http.set_cookie(login.token_cookie, login._cipher.encrypt(b"alices-hub-token").decode(), domain="localhost")
    for method in ("GET", "POST", "DELETE"):
        path = "/jobs/run-7" if method == "DELETE" else "/jobs"
        response = http.open(path, method=method, headers=headers, json={})
        assert response.status_code == 403 and response.json["error"]["code"] == "cross_site_request", (method, headers)
    same_origin = http.get("/jobs", headers={"Origin": "https://gateway.example.org", "Sec-Fetch-Site": "same-origin"})
    assert same_origin.json["error"]["code"] == "auth_unavailable", "past the check, on to the hub, which is not there"
    by_a_link = http.get("/", headers={**HTML, **headers, "Sec-Fetch-Mode": "navigate"})
    assert by_a_link.json["error"]["code"] == "auth_unavailable", "a link from another site opens the page"


def test_anonymous_page_views_leave_no_login_state_in_memory(http: FlaskClient, measured) -> None:
    http.get("/", headers=HTML)  # the first request's one-off costs
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10_000):
            assert http.get("/", headers=HTML).status_code == 302
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A state kept per view took 3.5 MB here; the bound leaves room for what other threads allocate meanwhile.
    assert grown < 2**20, f"{grown} bytes kept after 10,000 logins begun"
    measured(f"browser login: 10,000 anonymous page views kept {grown} bytes (tracemalloc)")


def test_a_login_cookie_is_honoured_for_the_logins_lifetime_and_not_a_second_longer(http: FlaskClient, https_app: Flask) -> None:
    """Fernet's time stamp is the cookie's own: one made as long ago as the login lasts is refused, whoever kept it."""
    login = services(https_app).browser_login
    assert login.max_age == services(https_app).settings.login_max_age == 8 * 3600
    now = int(time.time())
    for age, code in ((login.max_age - 60, "auth_unavailable"), (login.max_age + 1, "not_authenticated")):
        http.set_cookie(login.token_cookie, login._cipher.encrypt_at_time(b"alices-hub-token", now - age).decode(), domain="localhost")
        response = http.get("/jobs")
        assert response.json["error"]["code"] == code, (age, "past the cookie, on to the hub, which is not there" if age < login.max_age else "")


def test_logging_out_clears_the_cookie_and_goes_on_to_the_hubs_logout_whatever_the_hub_says(http: FlaskClient, https_app: Flask) -> None:
    login = services(https_app).browser_login
    http.set_cookie(login.token_cookie, login._cipher.encrypt(b"alices-hub-token").decode(), domain="localhost")

    out = http.post("/logout", headers={"Origin": "https://gateway.example.org"})

    assert out.status_code == 303 and out.headers["Location"] == "https://hub.example.org/hub/logout"
    cleared = [cookie for cookie in out.headers.getlist("Set-Cookie") if cookie.startswith(f"{login.token_cookie}=;")]
    assert len(cleared) == 1 and {"Max-Age=0", "Secure", "HttpOnly", "Path=/"} <= {part.strip() for part in cleared[0].split(";")}
    assert http.get_cookie(login.token_cookie, domain="localhost") is None
    assert http.get("/jobs").json["error"]["code"] == "not_authenticated"


def test_only_the_gateways_own_page_logs_a_browser_out(http: FlaskClient, https_app: Flask) -> None:
    """Another site's form is refused, and a GET (a link, a prefetch, an image) is no logout."""
    login = services(https_app).browser_login
    cookie = login._cipher.encrypt(b"alices-hub-token").decode()
    http.set_cookie(login.token_cookie, cookie, domain="localhost")
    refused = http.post("/logout", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and refused.json["error"]["code"] == "cross_site_request"
    fetched = http.get("/logout")
    # Its cookie is checked first, as for any route's wrong method: with the hub, a 405.
    assert fetched.status_code == 503 and "Set-Cookie" not in fetched.headers
    assert http.get_cookie(login.token_cookie, domain="localhost").value == cookie


# -- through the hub's proxy: the gateway at /services/science-gateway/ on the hub's own address --------------

PREFIX = "/services/science-gateway"


def next_of(response) -> str:
    (state,) = parse_qs(urlsplit(response.headers["Location"]).query)["state"]
    return json.loads(base64.urlsafe_b64decode(state))["next"]


@pytest.fixture(scope="module")
def hub_routed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    yield from auth_app(tmp_path_factory, f"https://hub.example.org{PREFIX}/oauth_callback")


def test_through_the_hub_the_login_comes_back_under_the_prefix_with_cookies_scoped_to_it(hub_routed_app: Flask) -> None:
    http = hub_routed_app.test_client()
    login = http.get(f"{PREFIX}/", headers=HTML)
    assert login.status_code == 302 and login.headers["Location"].startswith("https://hub.example.org/hub/api/oauth2/authorize?")
    assert next_of(login) == f"{PREFIX}/"
    assert next_of(http.get(f"{PREFIX}/?page=2", headers=HTML)) == f"{PREFIX}/?page=2"
    cookie = login.headers["Set-Cookie"]
    # __Host- needs Path=/: scoped to the prefix, the cookie is __Secure- (still never set over plain HTTP).
    assert cookie.startswith("__Secure-service-science-gateway-oauth-state=")
    assert {"Secure", "HttpOnly", f"Path={PREFIX}", "SameSite=Lax"} <= {part.strip() for part in cookie.split(";")}
    assert "Domain=" not in cookie
    # Through the hub, a login that began at the gateway's own root comes back to the page under the prefix.
    assert next_of(http.get("/", headers=HTML)) == f"{PREFIX}/"


def test_through_the_hub_logging_out_clears_the_cookie_at_the_prefix(hub_routed_app: Flask) -> None:
    http = hub_routed_app.test_client()
    login = services(hub_routed_app).browser_login
    http.set_cookie(login.token_cookie, login._cipher.encrypt(b"alices-hub-token").decode(), domain="localhost", path=PREFIX)
    out = http.post(f"{PREFIX}/logout", headers={"Origin": "https://hub.example.org"})
    assert out.status_code == 303 and out.headers["Location"] == "https://hub.example.org/hub/logout"
    (cleared,) = [cookie for cookie in out.headers.getlist("Set-Cookie") if cookie.startswith(f"{login.token_cookie}=;")]
    assert {"Max-Age=0", "Secure", "HttpOnly", f"Path={PREFIX}"} <= {part.strip() for part in cleared.split(";")}


def test_a_callback_under_the_prefix_is_served_there_and_at_the_gateways_own_root(hub_routed_app: Flask) -> None:
    http = hub_routed_app.test_client()
    for path in (f"{PREFIX}/oauth_callback", "/oauth_callback"):
        forged = http.get(f"{path}?code=c&state=s")
        assert forged.status_code == 401 and "did not come back as it left" in forged.json["error"]["message"], path
