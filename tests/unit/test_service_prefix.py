"""The gateway at its own root and under the hub proxy's /services/science-gateway/: the same routes, URLs made under the prefix the request came by."""

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from devtools.processes import free_port
from helpers import running_app
from science_gateway.service_prefix import ServicePrefix

PREFIX = "/services/science-gateway"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    # No cluster answers: the routes and the URLs they make are what is checked.
    environ = {"DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{free_port()}", "GATEWAY_RESULTS_URL": str(tmp_path_factory.mktemp("results"))}
    with running_app(environ) as running:
        yield running


@pytest.fixture
def http(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.mark.parametrize("root", ["", PREFIX])
def test_every_route_answers_at_both_roots(http: FlaskClient, root: str) -> None:
    assert http.get(f"{root}/healthz").json == {"status": "ok"}
    assert http.get(f"{root}/jobs").json == {"jobs": [], "next_cursor": None}
    assert http.get(f"{root}/apps/random-array").json["name"] == "random-array"


def test_a_job_submitted_through_the_prefix_is_told_its_urls_under_it_and_directly_without(http: FlaskClient) -> None:
    through = http.post(f"{PREFIX}/jobs", json={"job_id": "prefixed", "shape": [10, 10]})
    assert through.status_code == 202, through.json
    assert through.headers["Location"] == f"{PREFIX}/jobs/prefixed"
    assert through.json["http_url"] == f"http://localhost{PREFIX}/jobs/prefixed/result"
    direct = http.get("/jobs/prefixed").json
    assert direct["http_url"] == "http://localhost/jobs/prefixed/result"
    assert http.get(f"{PREFIX}/jobs/prefixed").json == {**direct, "http_url": through.json["http_url"]}


def test_the_page_through_the_prefix_links_under_it(http: FlaskClient) -> None:
    page = http.get(f"{PREFIX}/", headers={"Accept": "text/html"}).get_data(as_text=True)
    assert f'data-jobs-url="{PREFIX}/jobs"' in page and f'src="{PREFIX}/static/jobs.js"' in page
    assert f'href="{PREFIX}/openapi.json"' in page
    # The prefix without its slash is the page too.
    bare = http.get(PREFIX, headers={"Accept": "text/html"})
    assert bare.status_code == 200 and f'data-jobs-url="{PREFIX}/jobs"' in bare.get_data(as_text=True)


def test_a_path_that_only_begins_like_the_prefix_is_not_under_it(http: FlaskClient) -> None:
    assert http.get(f"{PREFIX}-other/healthz").status_code == 404
    assert http.get("/services/healthz").status_code == 404


@pytest.mark.parametrize("prefix", ["", "/", "services/x/", "/services/x"])
def test_a_prefix_is_a_path_that_starts_and_ends_with_a_slash(prefix: str) -> None:
    with pytest.raises(ValueError, match="starts and ends with '/'"):
        ServicePrefix(lambda environ, start_response: [], prefix)


def seen_by_the_app(prefix: str, public_origin: str | None, path: str) -> dict:
    seen: dict = {}

    def app(environ, start_response):
        seen.update({name: environ.get(name) for name in ("SCRIPT_NAME", "PATH_INFO", "wsgi.url_scheme", "HTTP_HOST")})
        return []

    ServicePrefix(app, prefix, public_origin)({"PATH_INFO": path, "SCRIPT_NAME": "", "wsgi.url_scheme": "http", "HTTP_HOST": "gateway-svc"}, None)
    return seen


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # Through the hub's proxy: the hub's https address, as the browser or notebook reached it.
        (f"{PREFIX}/jobs", {"SCRIPT_NAME": PREFIX, "PATH_INFO": "/jobs", "wsgi.url_scheme": "https", "HTTP_HOST": "hub.example.org"}),
        # At the pod's own root (notebooks, curl in the cluster): as the request came.
        ("/jobs", {"SCRIPT_NAME": "", "PATH_INFO": "/jobs", "wsgi.url_scheme": "http", "HTTP_HOST": "gateway-svc"}),
    ],
)
def test_urls_made_for_a_request_through_the_prefix_name_the_hubs_public_address(path: str, expected: dict) -> None:
    assert seen_by_the_app(f"{PREFIX}/", "https://hub.example.org", path) == expected


def test_without_a_public_address_a_request_through_the_prefix_keeps_its_own() -> None:
    assert seen_by_the_app(f"{PREFIX}/", None, f"{PREFIX}/jobs")["HTTP_HOST"] == "gateway-svc"
