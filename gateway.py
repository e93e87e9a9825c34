"""The HTTP layer of the science gateway: routes, request parsing and one JSON error shape.

Every error is ``{"error": {"code": ..., "message": ...}}`` with an HTTP status
that fits it; Flask's HTML error pages never reach a caller.

Run it with gunicorn (``gunicorn -c gunicorn.conf.py gateway:app``): ``app`` is
created on first access, so importing this module for :func:`create_app` starts
no cluster.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
from collections.abc import Generator, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from science_gateway.admission import RETRY_AFTER_SECONDS, Places
from science_gateway.apps.base import App, Output
from science_gateway.apps.registry import Apps, load_apps
from science_gateway.auth import ANYONE, Caller, HubCallers, NotAuthenticated
from science_gateway.browser_login import CALLBACK_PATH, LOGIN_PAGE_SECONDS, LOGOUT_PATH, BrowserLogin
from science_gateway.chunk_writes import STOP_TIMEOUT, JobCancelled
from science_gateway.cluster import ClusterConnection
from science_gateway.errors import GatewayError, status_of
from science_gateway.hang_ups import HangUpWatch
from science_gateway.job_events import JobEvent
from science_gateway.job_parameters import JOB_ID_PATTERN, JOB_ID_RULE, InvalidJobId, InvalidParameters, parse_ttl, validate_job_id
from science_gateway.job_records import CANCELLED, DONE, MAX_PAGE, QUEUED, RUNNING, STATUSES, JobKey, JobRecord
from science_gateway.job_work import JobWork, plan_work
from science_gateway.jobs import JobManager, JobNotFound
from science_gateway.metrics import GatewayMetrics, JsonFormatter
from science_gateway.openapi import LAST_EVENT_ID_PATTERN, OPEN_PATHS, PREVIEW_SIZES, openapi_document
from science_gateway.readiness import Readiness
from science_gateway.result_reads import JobNotDone, ResultReads
from science_gateway.results_store import ResultsStore, StorageError
from science_gateway.service_prefix import ServicePrefix
from science_gateway.settings import Settings, load_settings, parse_flag

logger = logging.getLogger("gateway")

DEFAULT_PAGE = 50
# The jobs page: how many jobs it shows and how often its script asks for their news.
PAGE_JOBS = 50
PAGE_REFRESH_SECONDS = 2
# The page loads its script and style from this service only and runs no inline script.
# Job parameters fit in a few hundred bytes: a body beyond this is refused before it is read (413).
MAX_BODY_BYTES = 16 * 1024
PAGE_SECURITY_POLICY = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
# A read beyond the gateway's reads or its owner's share waits this long for a place before it is refused: reads
# are short, and a reader's library (fsspec, zarr) fails on a 429 rather than trying again.
READ_PATIENCE_SECONDS = 10


@dataclass(frozen=True)
class GatewayServices:
    """What one app holds: its settings, its cluster, its results store and its jobs."""

    settings: Settings
    apps: Apps
    cluster: ClusterConnection
    store: ResultsStore
    jobs: JobManager
    metrics: GatewayMetrics
    # None: no authentication, every caller is ANYONE.
    callers: HubCallers | None
    # None: no login through the hub for browsers.
    browser_login: BrowserLogin | None
    waiting: Places
    # Callers following jobs' events (GET /jobs/<id>/events), each in a request thread of its own.
    streams: Places
    hang_ups: HangUpWatch
    reads: ResultReads
    readiness: Readiness

    def close(self) -> None:
        self.jobs.close()
        self.readiness.close()
        self.cluster.close()


def error_response(status: int, code: str, message: str, **details: Any) -> tuple[Response, int]:
    """The service's one error shape."""
    return jsonify({"error": {"code": code, "message": message, **details}}), status


class AnyJobId(PathConverter):
    """Everything after the route's prefix, slashes and newlines included, except a preview's or a result's path.

    Werkzeug's ``path`` stops at a newline and a leading slash, which would make
    such an id a bare 404; this way every malformed id reaches
    :func:`validate_job_id` and its caller learns what an id may be. A path
    ending in ``/preview.png``, ``/events``, ``/cancel``, or ``/result`` and its objects, is left to that
    route alone, so that its ``Allow`` lists only that route's methods.
    """

    regex = r"(?![\s\S]*/(?:preview\.png|events|cancel|result(?:/[\s\S]*)?)$)[\s\S]+?"
    part_isolating = False


def services(app: Flask) -> GatewayServices:
    return app.extensions["science_gateway"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app and start obtaining its Dask cluster and its job records in the background."""
    settings = settings or load_settings()
    _configure_logging(settings.log_format)
    # Before anything starts: an app that cannot be offered stops the start-up, naming its package.
    apps = load_apps(settings.apps)
    cluster = ClusterConnection(settings)
    store = ResultsStore(settings.results_url)
    # The gauges read the jobs and the last readiness check when scraped (both are bound below).
    metrics = GatewayMetrics(
        running=lambda: jobs.count(RUNNING),
        queued=lambda: jobs.count(QUEUED),
        workers=lambda: readiness.current().get("cluster", {}).get("workers", 0),
        stored_bytes=lambda: jobs.stored_bytes(),
        waiting_callers=lambda: waiting.taken,
        result_reads=lambda: reads.places.taken,
        streams=lambda: streams.taken,
    )
    readiness = Readiness(lambda: _check_readiness(cluster, store, metrics), CHECKED_PARTS)
    jobs = JobManager(cluster, store, settings, metrics, apps)
    callers = HubCallers(settings) if settings.auth == "jupyterhub" else None
    browser_login = BrowserLogin(settings) if callers is not None and settings.oauth_callback_url else None
    waiting = Places("waiting_callers", settings.max_waiting_callers, settings.max_waiting_callers_per_owner)
    streams = Places("streams", settings.max_streams, settings.max_streams_per_owner)
    reads = ResultReads(store.url, Places("reads", settings.max_reads, settings.max_reads_per_owner, patience=READ_PATIENCE_SECONDS))
    gateway = GatewayServices(settings, apps, cluster, store, jobs, metrics, callers, browser_login, waiting, streams, HangUpWatch(), reads, readiness)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.url_map.converters["job_id"] = AnyJobId
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's DefaultJSONProvider has it
    app.extensions["science_gateway"] = gateway
    if callers is not None:
        _register_authentication(app, callers, browser_login)
    app.register_blueprint(routes)
    _register_error_handlers(app)
    # At the gateway's own root and at the hub proxy's /services/<name>/, url_for's URLs carrying the prefix the request came by.
    public_origin = browser_login.origin if browser_login is not None and browser_login.served_through_hub else None
    app.wsgi_app = ServicePrefix(app.wsgi_app, settings.service_prefix, public_origin)  # type: ignore[method-assign,assignment]  # a WSGI app for a method
    cluster.start()
    gateway.jobs.start()
    readiness.start()
    # SIGTERM under gunicorn ends the worker through a normal interpreter exit,
    # so this is also what stops the cluster when Kubernetes stops the pod.
    atexit.register(gateway.close)
    logger.info(
        "gateway starting: %s cluster, results in %s, authentication %s, apps %s",
        cluster.kind, store.url, settings.auth, ", ".join(f"{app.name} {app.version}" for app in apps),
    )  # fmt: skip
    return app


HEALTHY = {"status": "ok"}
# The dependencies the readiness thread checks (readiness.py); /readyz adds the job records.
CHECKED_PARTS = ("cluster", "results_store")


def probe_answer(gateway: GatewayServices, path: str) -> tuple[int, dict[str, Any]] | None:
    """The answer to a probe, from memory, for the probe server (probe_server.py); None for a path that is no probe."""
    if path == "/healthz":
        return 200, HEALTHY
    return readiness_answer(gateway) if path == "/readyz" else None


def readiness_answer(gateway: GatewayServices) -> tuple[int, dict[str, Any]]:
    """``/readyz``: whether this process serves requests, with each dependency's state beside it.

    ``200`` from the app's creation on, ``status`` ``ready`` when every dependency is, ``degraded`` naming
    those that are not in ``failing`` (the reasons in ``message``): the last background check of the
    cluster and the store, and whether the job records are read. An outage of one of them leaves the
    process ready: each request that needs it answers ``503`` with ``Retry-After`` naming it, which a
    notebook reads and tries again, where an unready pod leaves the Service without it, and with one
    replica nobody gets an answer at all. ``503`` ``gateway_stopping`` from the graceful stop (SIGTERM)
    on: the Service then sends new requests to other pods while gunicorn finishes those in flight.
    """
    records_ready, records_reason = gateway.jobs.readiness()
    details = {**gateway.readiness.current(), "job_records": {"ready": records_ready, "reason": records_reason}, "replicas": gateway.jobs.replication()}
    failing = [name for name, part in details.items() if not part["ready"]]
    if gateway.jobs.stopping or gateway.readiness.closed:
        message = "the gateway is stopping: it takes no new jobs, and finishes those running"
        return 503, {"error": {"code": "gateway_stopping", "message": message, **details}}
    reasons = "; ".join(f"{name}: {details[name]['reason']}" for name in failing)
    return 200, {"status": "degraded" if failing else "ready", "failing": failing, "message": reasons, **details}


def _check_readiness(cluster: ClusterConnection, store: ResultsStore, metrics: GatewayMetrics) -> dict[str, dict[str, Any]]:
    """The cluster's and the results store's readiness, as they answer now (up to seconds each)."""
    try:
        store.check()
        stored = {"ready": True, "url": store.url, "reason": ""}
    except StorageError as exc:
        metrics.s3_errors.inc()
        stored = {"ready": False, "url": store.url, "reason": str(exc)}
    return {"cluster": cluster.status().to_json(), "results_store": stored}


def _configure_logging(log_format: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_format == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())


# The app of /submit_job, and of a POST /jobs body without "app": the gateway's first computation.
FIRST_APP = "random-array"
# A POST /jobs body with "app": these fields, the parameters inside "parameters".
APP_BODY_FIELDS = ("app", "parameters", "job_id", "ttl")


def _planned(gateway: GatewayServices, app: App, parameters: Any) -> JobWork:
    """The work of the caller's job of ``app``: the parameters checked against its schema, then planned by the app."""
    owner = _caller().name
    checked = gateway.apps.check(app, parameters)
    return plan_work(app, checked, gateway.jobs.limits, lambda job_id: gateway.jobs.source(owner, job_id))


def _job_ttl(gateway: GatewayServices, value: Any) -> int | None:
    return parse_ttl(value, gateway.settings.result_ttl, gateway.settings.max_result_ttl)


def _left_to_gateway(app: App, parameters: dict[str, Any], ttl: Any) -> set[str]:
    """The parameters a submission leaves to the gateway, which any value of an existing job of its id matches."""
    drawn = {name for name in app.drawn if parameters.get(name) is None}
    return drawn | ({"ttl"} if ttl is None else set())


def _flag(name: str, value: str) -> bool:
    flag = parse_flag(value)
    if flag is None:
        raise InvalidParameters(f"{name} must be true or false, got {value!r}")
    return flag


def _query(allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each given once and each one of ``allowed``."""
    for name in request.args:
        if name not in allowed:
            raise InvalidParameters(f"unknown query parameter {name!r}; allowed: {', '.join(allowed)}")
        if len(request.args.getlist(name)) > 1:
            raise InvalidParameters(f"query parameter {name!r} is given more than once")
    return request.args.to_dict()


def _job_json(record: JobRecord) -> dict[str, Any]:
    """A record as callers see it: with ``http_url``, its result's Zarr group as this gateway serves it to them."""
    return {**record.to_json(), "http_url": _http_url(record.key)}


def _http_url(key: JobKey) -> str:
    return url_for("gateway.read_result", owner=key.owner, job_id=key.job_id, key="", _external=True)


def _submitted(record: JobRecord) -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    """The answer to a submission that does not wait: the job done already (a repeat), or queued or running to poll."""
    if record.status == DONE:
        return jsonify(_job_json(record)), 200
    return jsonify(_job_json(record)), 202, {"Location": url_for("gateway.get_job", job_id=record.job_id)}


def _connection() -> Any:
    """The caller's socket, from gunicorn or Werkzeug's own server; None from a server that does not give it."""
    return request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")


def _caller() -> Caller:
    return g.get("caller", ANYONE)


def _job_key(job_id: str, owner: str | None) -> JobKey:
    """The job a request names: the caller's own, or with ``/users/<owner>/`` that owner's.

    Only the owner and admins reach a job through its owner's path; for anyone
    else it is not found, as a job that does not exist, so that no name or id leaks.
    """
    validate_job_id(job_id)
    caller = _caller()
    if owner is None:
        return JobKey(caller.name, job_id)
    if caller.sees_all or caller.name == owner:
        return JobKey(owner, job_id)
    raise JobNotFound(f"no job {job_id!r}")


def _visible_to() -> str | None:
    """The owner whose jobs the caller sees, or None for all of them."""
    caller = _caller()
    return None if caller.sees_all else caller.name


# Every route of the service but the browser login's (see _register_authentication).
routes = Blueprint("gateway", __name__)


def _services() -> GatewayServices:
    return services(current_app)


@routes.get("/")
def index() -> Response:
    gateway = _services()
    if _wants_html():
        response = _jobs_page(gateway)
    else:
        response = Response("Gateway up and running!", mimetype="text/plain")
    response.vary.add("Accept")
    return response


@routes.get("/healthz")
def healthz() -> Response:
    return jsonify(HEALTHY)


@routes.get("/readyz")
def readyz() -> Any:
    gateway = _services()
    status, body = readiness_answer(gateway)
    return jsonify(body), status


@routes.get("/metrics")
def metrics() -> Response:
    gateway = _services()
    body, content_type = gateway.metrics.render()
    return Response(body, content_type=content_type)


@routes.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@routes.get("/submit_job/", defaults={"job_id": ""})
@routes.get("/submit_job/<job_id:job_id>")
def submit_job(job_id: str) -> Any:
    gateway = _services()
    jobs = gateway.jobs
    validate_job_id(job_id)
    app = gateway.apps.get(FIRST_APP)
    query: dict[str, Any] = _query(("wait", "ttl", *app.parameters["properties"]))
    wait = _flag("wait", query.pop("wait", "true"))
    asked_ttl = query.pop("ttl", None)
    parameters = gateway.apps.from_query(app, query)
    left_to_gateway = _left_to_gateway(app, parameters, asked_ttl)
    work = _planned(gateway, app, parameters)
    ttl = _job_ttl(gateway, asked_ttl)
    owner = _caller().name
    if not wait:
        return _submitted(jobs.submit(job_id, work, owner, ttl, left_to_gateway)[0])
    # A cell run again gets its finished job at once, whatever the cluster or the waiting room.
    repeated = jobs.repeat_of(job_id, work, owner, ttl, left_to_gateway)
    if repeated is not None and repeated.status == DONE:
        return jsonify(_job_json(repeated))
    # A caller who waits learns at once that there is no cluster, rather than after a long wait.
    gateway.cluster.raise_if_failing()
    timeout = gateway.settings.job_timeout
    advice = "submit with wait=false (or POST /jobs) and poll the job's Location instead"
    with gateway.waiting.place(owner, advice), gateway.hang_ups.watching(_connection()) as waiter:
        key = jobs.submit(job_id, work, owner, ttl, left_to_gateway)[0].key
        finished = jobs.wait(key, timeout, waiter)
        if finished.status == RUNNING and not waiter.gone:
            # It started within the timeout, so its own GATEWAY_JOB_TIMEOUT and the stop of its
            # tasks end it within this wait: the caller learns the outcome, 504 included.
            finished = jobs.wait(key, timeout + STOP_TIMEOUT, waiter)
    if waiter.gone:
        # Nobody reads this answer; the access log shows the caller left, and the job goes on.
        return error_response(499, "caller_gone", f"the caller hung up while job {job_id!r} was {finished.status}")
    if finished.status == DONE:
        return jsonify(_job_json(finished))
    if finished.status in (QUEUED, RUNNING) and not jobs.stopping:
        # Waited GATEWAY_JOB_TIMEOUT in the queue: the job goes on, the caller polls.
        return _submitted(finished)
    if finished.status == QUEUED:
        message = f"the gateway is stopping; job {job_id!r} stays queued and runs when the gateway is back"
        response, status = error_response(503, "gateway_stopping", message, job=_job_json(finished))
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response, status
    error = finished.error or {"code": JobCancelled.code, "message": f"job {job_id!r} was cancelled"}
    return error_response(status_of(error["code"]), error["code"], error["message"], job=_job_json(finished))


@routes.post("/jobs")
def post_job() -> Any:
    gateway = _services()
    _query(())
    # Even without a body: a form on another site can send any other type, a script of this page sends this one.
    if request.mimetype != "application/json":
        return error_response(415, "unsupported_media_type", "send the job as a JSON object with Content-Type: application/json")
    body = _json_body() if request.content_length else {}
    if not isinstance(body, dict):
        raise InvalidParameters('the request body must be a JSON object, such as {"app": "random-array", "parameters": {"seed": 7}}')
    job_id = body.pop("job_id", None)
    if job_id is not None and not isinstance(job_id, str):
        raise InvalidJobId(f"job_id must be a string, got {type(job_id).__name__}")
    asked_ttl = body.pop("ttl", None)
    if "app" in body:
        unknown = sorted(set(body) - set(APP_BODY_FIELDS))
        if unknown:
            fields = ", ".join(APP_BODY_FIELDS)
            raise InvalidParameters(f'unknown field {unknown[0]!r}; a job with an app has {fields}, and its parameters go in "parameters"')
        app = gateway.apps.get(body["app"])
        parameters = body.get("parameters", {})
    else:
        # Today's body: the first app's parameters beside job_id and ttl.
        app, parameters = gateway.apps.get(FIRST_APP), body
    work = _planned(gateway, app, parameters)
    left_to_gateway = _left_to_gateway(app, parameters if isinstance(parameters, dict) else {}, asked_ttl)
    ttl = _job_ttl(gateway, asked_ttl)
    return _submitted(gateway.jobs.submit(job_id, work, _caller().name, ttl, left_to_gateway)[0])


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _json_body() -> Any:
    """The request's JSON, or None when it is none: malformed, NaN or Infinity (which no JSON reader takes back), or nested past Python's depth."""
    try:
        return json.loads(request.get_data(), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None


def _app_json(app: App) -> dict[str, Any]:
    return {"name": app.name, "version": app.version, "description": app.description, "parameters": app.parameters}


@routes.get("/apps")
def list_apps() -> Any:
    _query(())
    return jsonify({"apps": [_app_json(app) for app in _services().apps]})


@routes.get("/apps/<path:name>")
def get_app(name: str) -> Any:
    _query(())
    return jsonify(_app_json(_services().apps.get(name)))


@routes.get("/jobs")
def list_jobs() -> Any:
    jobs = _services().jobs
    query = _query(("status", "limit", "cursor"))
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidParameters(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    try:
        limit = int(query.get("limit", DEFAULT_PAGE))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidParameters(f"limit must be an integer from 1 to {MAX_PAGE}, got {query.get('limit')!r}")
    page, next_cursor = jobs.list(status, limit, query.get("cursor"), _visible_to())
    return jsonify({"jobs": [_job_json(record) for record in page], "next_cursor": next_cursor})


@routes.get("/usage")
def usage() -> Any:
    gateway = _services()
    jobs = gateway.jobs
    _query(())
    owner = _caller().name
    stored_bytes, job_count = jobs.usage(owner)
    quota = gateway.settings.owner_quota_bytes
    return jsonify({"owner": owner, "stored_bytes": stored_bytes, "jobs": job_count, "quota_bytes": quota})


# Each job's routes at /jobs/<id> (the caller's own job) and at /users/<owner>/jobs/<id> (the owner's or an admin's).
@routes.get("/jobs/<job_id:job_id>", defaults={"owner": None})
@routes.get("/users/<owner>/jobs/<job_id:job_id>")
def get_job(job_id: str, owner: str | None) -> Any:
    jobs = _services().jobs
    _query(())
    return jsonify(_job_json(jobs.get(_job_key(job_id, owner))))


@routes.get("/jobs/<job_id>/preview.png", defaults={"owner": None})
@routes.get("/users/<owner>/jobs/<job_id>/preview.png")
def preview(job_id: str, owner: str | None) -> Any:
    gateway = _services()
    jobs = gateway.jobs
    size = _query(("size",)).get("size", "full")
    if size not in PREVIEW_SIZES:
        raise InvalidParameters(f"size must be one of {', '.join(PREVIEW_SIZES)}, got {size!r}")
    record = jobs.get(_job_key(job_id, owner))
    if record.status != DONE:
        raise JobNotDone(f"job {job_id!r} is {record.status}; its preview exists once it is done", _job_json(record))
    # A finished array never changes; an id submitted again finishes at another time.
    etag = f"{job_id}-{record.finished_at}-{size}"
    if request.if_none_match.contains(etag):
        return _preview_response(b"", etag, 304)
    # Drawn once, on the cluster, then read from beside the result: a jobs page asks for fifty.
    png = gateway.store.read_preview(record.place, str(record.finished_at), size)
    if png is None:
        png = _draw_preview(gateway, record, size)
    return _preview_response(png, etag, 200)


@routes.get("/jobs/<job_id>/result", defaults={"owner": None, "key": ""})
@routes.get("/jobs/<job_id>/result/<path:key>", defaults={"owner": None})
@routes.get("/users/<owner>/jobs/<job_id>/result", defaults={"key": ""})
@routes.get("/users/<owner>/jobs/<job_id>/result/<path:key>")
def read_result(job_id: str, owner: str | None, key: str) -> Any:
    """An object of a done job's result (the record's ``http_url`` is this route's root), read-only."""
    gateway = _services()
    _query(())
    record = gateway.jobs.get(_job_key(job_id, owner))
    return gateway.reads.response(record, _job_json(record), key, request, _caller().name, _connection())


@routes.get("/jobs/<job_id>/events", defaults={"owner": None})
@routes.get("/users/<owner>/jobs/<job_id>/events")
def job_events(job_id: str, owner: str | None) -> Any:
    """The job's record at each change, as Server-Sent Events, until it is finished (docs/api.md)."""
    gateway = _services()
    _query(())
    key = _job_key(job_id, owner)
    last_id = _last_event_id()
    advice = "poll the job's record (GET /jobs/<id>) instead, or close a stream you no longer read"
    # Held until the server closes the answer, whether it was read to its end or the caller left.
    held = ExitStack()
    try:
        held.enter_context(gateway.streams.place(_caller().name, advice))
        waiter = held.enter_context(gateway.hang_ups.watching(_connection()))
        events = gateway.jobs.follow(key, last_id, waiter)
    except BaseException:
        held.close()
        raise
    if events is None:
        held.close()
        # The caller has the final event: 204 tells an EventSource not to connect again.
        return Response(status=204)
    http_url = _http_url(key)
    response = Response(_event_stream(events, http_url, held), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    # nginx, as an ingress controller, would otherwise hold the events back in its buffer.
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(held.close)
    return response


# What an EventSource waits before it connects again after losing the stream, in milliseconds.
RECONNECT_MILLISECONDS = 2000


def _event_stream(events: Generator[JobEvent | None], http_url: str, held: ExitStack) -> Iterator[str]:
    # The places are given back when the stream ends, and (if it never began) when the server closes the answer.
    with held, closing(events):
        yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
        for event in events:
            if event is None:
                yield ": keep-alive\n\n"
            else:
                yield f"id: {event.id}\nevent: job\ndata: {json.dumps({**event.job, 'http_url': http_url})}\n\n"


def _last_event_id() -> int | None:
    """The ``Last-Event-ID`` an EventSource sends when it connects again: the id of the last event it has."""
    value = request.headers.get("Last-Event-ID")
    if value is None:
        return None
    if not re.fullmatch(LAST_EVENT_ID_PATTERN, value):
        raise InvalidParameters(f"Last-Event-ID must be the id of an event of this stream, a whole number; got {value[:40]!r}")
    return int(value)


@routes.post("/jobs/<job_id>/cancel", defaults={"owner": None})
@routes.post("/users/<owner>/jobs/<job_id>/cancel")
def cancel_job(job_id: str, owner: str | None) -> Any:
    """Stop a queued or running job; never delete one: a job that finished first keeps its result (409)."""
    gateway = _services()
    _query(())
    record = gateway.jobs.cancel(_job_key(job_id, owner))
    if record.status != CANCELLED:
        message = f"job {job_id!r} is {record.status}: there is nothing to cancel (DELETE the job to delete its result)"
        return error_response(409, "job_finished", message, job=_job_json(record))
    return jsonify(_job_json(record))


@routes.delete("/jobs/<job_id:job_id>", defaults={"owner": None})
@routes.delete("/users/<owner>/jobs/<job_id:job_id>")
def delete_job(job_id: str, owner: str | None) -> Any:
    jobs = _services().jobs
    _query(())
    cancelled = jobs.cancel_or_delete(_job_key(job_id, owner))
    return jsonify(_job_json(cancelled)) if cancelled else Response(status=204)


def _draw_preview(gateway: GatewayServices, record: JobRecord, size: str) -> bytes:
    # Imported at the first drawing: dask.array and matplotlib add 72 MB to the
    # process (measured), which a gateway that never draws one need not carry.
    from science_gateway.preview import preview_png

    with gateway.waiting.place(_caller().name, "ask for the picture again in a few seconds"):
        png = preview_png(gateway.cluster.client(), record.to_json()["array_url"], record.job_id, gateway.settings.n_workers, size)
    try:
        gateway.store.write_preview(record.place, str(record.finished_at), size, png)
    except StorageError as exc:
        # The picture is drawn; the next request draws it again.
        gateway.metrics.s3_errors.inc()
        logger.error("%s", exc)
    return png


def _wants_html() -> bool:
    # curl and scripts send */*: they get what they always had. Browsers ask for HTML.
    return request.accept_mimetypes.best_match(["text/plain", "text/html"]) == "text/html"


def _register_authentication(app: Flask, callers: HubCallers, login: BrowserLogin | None) -> None:
    """Every request but the open ones names its caller; the jobs page sends a browser without a login to the hub's."""

    @app.before_request
    def identify_caller() -> Response | None:
        # The API document's open paths (a probe, a Prometheus scrape), the hub's way back from a login, and the
        # way out of one, which must clear the cookie whether or not the hub can be asked about its token.
        # Open at the pod's own root alone, where probes and scrapes come: through the hub's proxy, anyone on the internet would reach them.
        is_open = request.url_rule is not None and request.url_rule.rule in OPEN_PATHS and not request.script_root
        if is_open or request.endpoint in ("oauth_callback", "logout"):
            return None
        authorization = request.headers.get("Authorization")
        cookie_token = None
        # /submit_job makes a job on a GET, which a link on another site can send
        # with a SameSite=Lax cookie: it takes the Authorization header alone.
        if login is not None and not authorization and request.endpoint != "gateway.submit_job":
            cookie_token = login.token(request.cookies.get(login.token_cookie))
            # A link from another site may open the page: showing it changes nothing, and no other site can read or frame it.
            opens_the_page = request.endpoint == "gateway.index" and request.method == "GET" and request.headers.get("Sec-Fetch-Mode") == "navigate"
            if cookie_token is not None and not opens_the_page:
                login.refuse_cross_site(request.headers)
        try:
            g.caller = callers.caller(authorization, cookie_token)
        except NotAuthenticated:
            if login is None or request.endpoint != "gateway.index" or request.method != "GET" or not _wants_html():
                raise
            url, state = login.start(request.script_root + request.full_path.rstrip("?"))
            response: Response = redirect(url)  # type: ignore[assignment]  # Flask's redirect makes Flask's Response
            response.set_cookie(login.state_cookie, state, max_age=LOGIN_PAGE_SECONDS, **login.cookie_options)
            return response
        return None

    if login is not None:

        @app.get(CALLBACK_PATH)
        def oauth_callback() -> Response:
            cookie, next_path = login.finish(request.args.get("code"), request.args.get("state"), request.cookies.get(login.state_cookie))
            response: Response = redirect(next_path)  # type: ignore[assignment]  # as above
            response.set_cookie(login.token_cookie, cookie, **login.token_cookie_options)
            response.delete_cookie(login.state_cookie, **login.cookie_options)
            return response

        @app.post(LOGOUT_PATH)
        def logout() -> Response:
            # A POST, which no link, prefetch or image of another site sends; and refused from another site's form.
            login.refuse_cross_site(request.headers)
            response: Response = redirect(login.logout_url, code=303)  # type: ignore[assignment]  # as above
            response.delete_cookie(login.token_cookie, **login.cookie_options)
            response.delete_cookie(login.state_cookie, **login.cookie_options)
            return response


def _preview_response(png: bytes, etag: str, status: int) -> Response:
    response = Response(png, status=status, mimetype="image/png")
    response.set_etag(etag)
    # Cached, but asked about each time: a browser that has the picture gets a 304 instead of a new drawing.
    response.headers["Cache-Control"] = "no-cache"
    return response


def _html_pattern(pattern: str) -> str:
    """An API document's pattern as a form's ``pattern``: anchored by HTML itself, and compiled
    with the ``v`` flag, under which a ``-`` at the end of a class must be escaped."""
    return pattern.removeprefix("^").removesuffix("$").replace("-]", r"\-]")


def _page_security_policy(login: BrowserLogin | None) -> str:
    """The page's policy; with a browser login on another host, its forms may also end at the hub: the logout's answer goes on to the hub's."""
    if login is None or not login.hub_origin:
        return PAGE_SECURITY_POLICY
    return PAGE_SECURITY_POLICY.replace("form-action 'self'", f"form-action 'self' {login.hub_origin}")


def _jobs_page(gateway: GatewayServices) -> Response:
    recent, _ = gateway.jobs.list(None, PAGE_JOBS, None, _visible_to())
    nothing = JobWork(app="", app_version="", parameters={}, output=Output((1, 1), (1, 1), "float32"))
    placeholder = {**JobRecord(job_id="", work=nothing, url="").to_json(), "http_url": "", "page_url": ""}
    # Each row links to its job on this host: at /users/<owner>/ for an owner's, so that an admin's links reach it too.
    rows = [{**_job_json(record), "page_url": url_for("gateway.get_job", owner=record.owner, job_id=record.job_id)} for record in recent]
    html = render_template(
        "jobs.html",
        jobs=rows,
        placeholder=placeholder,
        jobs_url=url_for("gateway.list_jobs"),
        page_size=PAGE_JOBS,
        refresh_seconds=PAGE_REFRESH_SECONDS,
        results_url=gateway.store.url,
        apps=[_app_json(app) for app in gateway.apps],
        job_id_rule=JOB_ID_RULE,
        job_id_pattern=_html_pattern(JOB_ID_PATTERN),
        logout_url=url_for("logout") if gateway.browser_login else None,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _page_security_policy(gateway.browser_login)
    return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def known_error(exc: GatewayError) -> Any:
        if isinstance(exc, StorageError):
            services(app).metrics.s3_errors.inc()
        if exc.status >= 500:
            logger.error("%s", exc)
        response, status = error_response(exc.status, exc.code, str(exc), **exc.details())
        response.headers.update(exc.headers())
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        response, status = error_response(exc.code or 500, code, exc.description or exc.name)
        # Werkzeug's own headers, such as the Allow of a 405, which HTTP requires.
        response.headers.extend((name, value) for name, value in exc.get_headers() if name.lower() != "content-type")
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        logger.exception("unexpected error")
        return error_response(500, "internal_error", f"unexpected {type(exc).__name__}; see the gateway log")


_app: Flask | None = None


def __getattr__(name: str) -> Any:
    # The module-level WSGI app gunicorn asks for ("gateway:app"), made on first
    # access so that importing create_app, in tests or tools, starts no cluster.
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_app()
    return _app
