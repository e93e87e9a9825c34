"""The jobs page at GET /, in a real headless browser (Debian's chromium, driven by Playwright), against gunicorn."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3

# What chromium sends for a page.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
@pytest.fixture(scope="module")
def page_gateway(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # One object per chunk, and a large job: it runs for several of the page's 2 s refreshes, so that the page shows it running.
    yield from serve_for_module(tmp_path_factory, "jobs-page", f"s3://{BUCKET}/jobs-page", GATEWAY_DEFAULT_SHARDS="none")


@pytest.fixture
def page(browser: Browser, page_gateway: RunningGateway) -> Iterator[Page]:
    """A fresh page on the gateway; the test fails on any script error, and on any failed request but a refused job."""
    context = browser.new_context(base_url=page_gateway.url)
    page = context.new_page()
    errors: list[str] = []

    def keep_script_error(message: ConsoleMessage) -> None:
        # A failed request is logged too, without its address: kept below, with it.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    def keep_failed_request(response: Response) -> None:
        if response.status >= 400 and not (response.request.method == "POST" and response.url.endswith("/jobs")):
            errors.append(f"{response.status} for {response.request.method} {response.url}")

    page.on("console", keep_script_error)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", keep_failed_request)
    yield page
    context.close()
    assert errors == [], "the page had errors"


# Keeps, for each job's row, the statuses it shows in turn (each change of its data-status, the row's first included).
ROW_STATUSES_KEPT = """() => {
  window.rowStatuses = {};
  const keep = (row) => {
    const shown = (window.rowStatuses[row.dataset.jobId] ??= []);
    if (row.dataset.status && shown.at(-1) !== row.dataset.status) shown.push(row.dataset.status);
  };
  new MutationObserver((changes) => changes.forEach((change) => change.target.matches?.("tr[data-job-id]") && keep(change.target)))
    .observe(document.querySelector("#jobs tbody"), { subtree: true, attributes: true, attributeFilter: ["data-status"] });
}"""


def test_a_job_submitted_from_the_form_reaches_done_and_shows_its_thumbnail(
    page: Page, page_gateway: RunningGateway, tmp_path: Path, measured
) -> None:
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if request.resource_type == "eventsource" else None)
    page.goto("/")
    expect(page).to_have_title("Science gateway: jobs")
    # Set before submitting: still there at the end means the page never reloaded.
    page.evaluate("window.sameDocument = true")
    # Every status the job's row shows, however briefly: its stream may bring the next one at once.
    page.evaluate(ROW_STATUSES_KEPT)

    page.fill("input[name=job_id]", "from-the-form")
    # Past 2**53: a JavaScript number would round it to 9007199254740992.
    page.fill("input[name=seed]", "9007199254740993")
    page.fill("input[name=shape]", "8000,8000")
    page.fill("input[name=chunks]", "100,100")
    page.click("button[type=submit]")

    expect(page.locator("#submit-result")).to_contain_text("Job from-the-form is queued")
    row = page.locator('#jobs tbody tr[data-job-id="from-the-form"]')
    expect(row).to_have_attribute("data-status", "done", timeout=120_000)
    expect(row.locator(".chunks")).to_have_text("6400/6400")
    assert page.evaluate("window.rowStatuses['from-the-form']") == ["queued", "running", "done"]
    # Followed through its event stream, the first of the page's streams.
    assert streams[:1] == [f"{page_gateway.url}/jobs/from-the-form/events"], streams
    expect(row.locator("a.record")).to_have_attribute("href", "/jobs/from-the-form")
    assert page.request.get("/jobs/from-the-form").json()["parameters"]["seed"] == 9007199254740993, "the seed as typed"
    thumbnail = row.locator(".preview img")
    expect(thumbnail).to_be_visible()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=thumbnail.element_handle(), timeout=60_000)
    width, height = thumbnail.evaluate("image => [image.naturalWidth, image.naturalHeight]")
    assert 0 < width <= 96 and 0 < height <= 96, "a thumbnail of at most 96 pixels a side"
    assert page.evaluate("window.sameDocument") is True, "the page was reloaded"
    page.screenshot(path=tmp_path / "jobs-page.png", full_page=True)
    measured(f"jobs page in chromium: an 8000x8000 job went queued, running, done; screenshot {tmp_path / 'jobs-page.png'}")


def test_the_form_is_the_chosen_apps_parameters_and_submits_them_as_json_numbers(page: Page) -> None:
    page.goto("/")
    page.select_option("select[name=app]", "julia-set")
    expect(page.locator("#parameters input[name=seed]")).to_have_count(0)
    expect(page.locator("#parameters input[name=c]")).to_have_attribute("placeholder", "-0.8,0.156")
    page.fill("input[name=job_id]", "julia-from-the-form")
    page.fill("input[name=c]", "-0.4,0.6")
    page.fill("input[name=size]", "200,300")
    page.click("button[type=submit]")

    expect(page.locator("#submit-result")).to_contain_text("Job julia-from-the-form is queued")
    row = page.locator('#jobs tbody tr[data-job-id="julia-from-the-form"]')
    expect(row).to_have_attribute("data-status", "done", timeout=60_000)
    record = page.request.get("/jobs/julia-from-the-form").json()
    assert (record["app"], record["parameters"]) == ("julia-set", {"c": [-0.4, 0.6], "size": [200, 300], "max_steps": 100})


def test_jobs_from_elsewhere_appear_and_a_refused_submission_says_why(page: Page, page_gateway: RunningGateway, http) -> None:
    page.goto("/")
    assert http.get(f"{page_gateway.url}/submit_job/from-curl?shape=100,100", timeout=60).status_code == 200

    row = page.locator('#jobs tbody tr[data-job-id="from-curl"]')
    expect(row).to_have_attribute("data-status", "done", timeout=30_000)
    expect(page.locator("#no-jobs")).to_be_hidden()

    page.fill("input[name=job_id]", "from-curl")
    page.click("button[type=submit]")
    expect(page.locator("#submit-result")).to_contain_text("Not submitted: job 'from-curl' exists with other parameters (shape is [100, 100]")
    expect(page.locator('#jobs tbody tr[data-job-id="from-curl"]')).to_have_count(1)


@pytest.mark.parametrize("accept", [None, "*/*", "text/plain", "application/json"])
def test_curl_and_scripts_still_get_the_plain_line(client: FlaskClient, accept: str | None) -> None:
    response = client.get("/", headers={"Accept": accept} if accept else {})
    assert response.mimetype == "text/plain" and response.text == "Gateway up and running!"
    assert "Accept" in response.vary


def test_a_browser_gets_the_page_with_a_policy_that_allows_only_its_own_script(client: FlaskClient) -> None:
    assert client.get("/submit_job/on-the-page?shape=100,100").status_code == 200

    response = client.get("/", headers={"Accept": BROWSER_ACCEPT})

    assert response.status_code == 200 and response.mimetype == "text/html" and "Accept" in response.vary
    assert "script-src" not in response.headers["Content-Security-Policy"], "default-src 'self' covers scripts"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert 'data-job-id="on-the-page" data-owner="" data-status="done"' in response.text
    assert 'src="/jobs/on-the-page/preview.png?size=thumbnail"' in response.text
    assert "<script>" not in response.text, "no inline script: the policy would block it"
    for asset in ("jobs.js", "jobs.css", "favicon.svg"):
        assert client.get(f"/static/{asset}").status_code == 200
