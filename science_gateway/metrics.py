"""What operators watch: the service's Prometheus metrics (``GET /metrics``) and its job log lines.

Each app has a registry of its own, so that several apps in one process (as in
the tests) count apart. With ``GATEWAY_LOG_FORMAT=json`` every log line is one
JSON object, and a job event's line carries ``job_id``, ``event``,
``status`` and ``seconds`` as fields for log collectors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Job durations span a 10x10 array (milliseconds) to the largest allowed (minutes).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# A phase of the default job takes a millisecond or a few tens of them.
PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600)
# Where a job's time goes, one observation of each per job:
JOB_PHASES = {
    "admission": "its submission's checks and limits and the check that its place is empty, until its record is saved",
    "records": "saving its record as queued",
    "start": "from a runner taking it until its tasks are handed to Dask: its record as running and its array's metadata saved",
    "scheduling": (
        "Dask's part: sending its tasks and their time on the cluster beyond the task that ended last (its hand-offs, and the wait of tasks behind others)"
    ),
    "generation": "that task making its objects: the app's values, encoded",
    "puts": "that task's PUTs that the making did not hide",
    "completion": "its result marked complete and its record saved as done",
}


class GatewayMetrics:
    """The service's counters, gauges and histogram, in a registry of their own."""

    def __init__(
        self,
        running: Callable[[], int],
        queued: Callable[[], int],
        workers: Callable[[], int],
        stored_bytes: Callable[[], int] = lambda: 0,
        waiting_callers: Callable[[], int] = lambda: 0,
        result_reads: Callable[[], int] = lambda: 0,
        streams: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.jobs_submitted = Counter("gateway_jobs_submitted", "Jobs accepted into the queue, by app", ["app"], registry=self.registry)
        self.jobs_finished = Counter(
            "gateway_jobs_finished", "Jobs that ended, by outcome (done, failed, cancelled) and app", ["outcome", "app"], registry=self.registry
        )
        self.job_duration = Histogram(
            "gateway_job_duration_seconds", "Running time of ended jobs, by outcome and app", ["outcome", "app"],
            buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.job_phases = Histogram(
            "gateway_job_phase_seconds",
            "Where jobs' time went, by phase (the first two for each job accepted, the others for each job done): "
            + "; ".join(f"{name}: {about}" for name, about in JOB_PHASES.items()),
            ["phase"], buckets=PHASE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.s3_errors = Counter("gateway_s3_errors", "Failures of the results store seen by the service", registry=self.registry)
        self.runner_errors = Counter(
            "gateway_job_runner_errors", "Unexpected failures of a job runner, which then went on with the next job", registry=self.registry
        )
        self.records_skipped = Counter(
            "gateway_job_records_skipped", "Stored job records skipped at start-up as malformed or not the service's", registry=self.registry
        )
        self.jobs_expired = Counter(
            "gateway_jobs_expired", "Finished jobs deleted, result and record, once their time to be kept was up", registry=self.registry
        )
        Gauge(
            "gateway_stored_bytes", "Bytes of the results of done, queued and running jobs (what owners' quotas count)", registry=self.registry
        ).set_function(stored_bytes)
        Gauge("gateway_jobs_running", "Jobs running on the cluster", registry=self.registry).set_function(running)
        Gauge("gateway_jobs_queued", "Jobs waiting for a runner", registry=self.registry).set_function(queued)
        Gauge("gateway_cluster_workers", "Dask workers the scheduler reports", registry=self.registry).set_function(workers)
        Gauge(
            "gateway_waiting_callers", "Requests holding a place in the waiting room (a waiting /submit_job, a preview being drawn)", registry=self.registry
        ).set_function(waiting_callers)
        Gauge("gateway_result_reads", "Objects of results being sent to their readers", registry=self.registry).set_function(result_reads)
        Gauge("gateway_event_streams", "Callers following a job's events (GET /jobs/<id>/events)", registry=self.registry).set_function(streams)

    def job_finished(self, outcome: str, seconds: float, app: str) -> None:
        self.jobs_finished.labels(outcome, app).inc()
        self.job_duration.labels(outcome, app).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and a job event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "job_event", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def job_event_fields(job_id: str, event: str, status: str, seconds: float | None = None) -> dict[str, Any]:
    """The ``extra`` of a job event's log line."""
    return {"job_event": {"job_id": job_id, "event": event, "status": status, "seconds": seconds}}
