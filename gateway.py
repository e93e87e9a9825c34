"""The HTTP layer of the science gateway: routes, request parsing and one JSON error shape.

Every error is ``{"error": {"code": ..., "message": ...}}`` with an HTTP status
that fits it; Flask's HTML error pages never reach a caller.

Run it with gunicorn (``gunicorn -c gunicorn.conf.py gateway:app``): ``app`` is
created on first access, so importing this module for :func:`create_app` starts
no cluster.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from cluster import ClusterConnection, ClusterNotReady
from random_array_job import InvalidJobId, JobAlreadyExists, JobFailed, JobTimedOut, RandomArrayJobs
from results_store import ResultsStore, StorageError
from settings import Settings, load_settings

logger = logging.getLogger("gateway")


@dataclass(frozen=True)
class GatewayServices:
    """What one app holds: its settings, its cluster, its results store and its jobs."""

    settings: Settings
    cluster: ClusterConnection
    store: ResultsStore
    jobs: RandomArrayJobs

    def close(self) -> None:
        self.cluster.close()


def error_response(status: int, code: str, message: str, **details: Any) -> tuple[Response, int]:
    """The service's one error shape."""
    return jsonify({"error": {"code": code, "message": message, **details}}), status


def services(app: Flask) -> GatewayServices:
    return app.extensions["science_gateway"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app and start obtaining its Dask cluster in the background."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings or load_settings()
    cluster = ClusterConnection(settings)
    store = ResultsStore(settings.results_url)
    gateway = GatewayServices(
        settings, cluster, store, RandomArrayJobs(cluster, store, settings.zarr_format, settings.job_timeout)
    )
    app = Flask(__name__)
    app.extensions["science_gateway"] = gateway
    _register_routes(app, gateway)
    _register_error_handlers(app)
    cluster.start()
    # SIGTERM under gunicorn ends the worker through a normal interpreter exit,
    # so this is also what stops the cluster when Kubernetes stops the pod.
    atexit.register(gateway.close)
    logger.info("gateway starting: %s cluster, results in %s", cluster.kind, store.url)
    return app


def _register_routes(app: Flask, gateway: GatewayServices) -> None:
    @app.get("/")
    def index() -> Response:
        return Response("Gateway up and running!", mimetype="text/plain")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Any:
        cluster = gateway.cluster.status()
        try:
            gateway.store.check()
            store = {"ready": True, "url": gateway.store.url, "reason": ""}
        except StorageError as exc:
            store = {"ready": False, "url": gateway.store.url, "reason": str(exc)}
        details = {"cluster": cluster.to_json(), "results_store": store}
        if cluster.ready and store["ready"]:
            return jsonify({"status": "ready", **details})
        reasons = "; ".join(part["reason"] for part in details.values() if not part["ready"])
        return error_response(503, "not_ready", reasons, **details)

    @app.get("/submit_job/", defaults={"job_id": ""})
    @app.get("/submit_job/<path:job_id>")
    def submit_job(job_id: str) -> Response:
        return jsonify(gateway.jobs.run(job_id).to_json())


# Each failure the service knows: its HTTP status and its error code.
KNOWN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidJobId: (400, "invalid_job_id"),
    ClusterNotReady: (503, "cluster_not_ready"),
    StorageError: (502, "storage_error"),
    JobTimedOut: (504, "job_timeout"),
    JobFailed: (500, "job_failed"),
}


def _register_error_handlers(app: Flask) -> None:
    def known_error(exc: Exception) -> Any:
        status, code = KNOWN_ERRORS[type(exc)]
        if status >= 500:
            logger.error("%s", exc)
        return error_response(status, code, str(exc))

    for exc_type in KNOWN_ERRORS:
        app.register_error_handler(exc_type, known_error)

    @app.errorhandler(JobAlreadyExists)
    def job_exists(exc: JobAlreadyExists) -> Any:
        return error_response(409, "job_exists", str(exc), url=exc.url)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

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
