"""What a job computes: its app's plan as a record keeps it (:class:`JobWork`), made from a caller's parameters, and made again when it runs.

A job that reads results (a source) names them by id: they are the same
owner's, and the place of each is taken from its own record when the job runs,
never from the job's record, which could otherwise name another's result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .apps.base import App, Limits, Output, Plan, Source
from .apps.layout import within_limits
from .apps.registry import Apps
from .errors import GatewayError

# The app of records from before there were apps: their "spec" holds its parameters.
FIRST_APP, FIRST_APP_VERSION = "random-array", "1.0.0"


class SourceNotFound(GatewayError, LookupError):
    """A source the parameters name is no job of the caller's (another user's job is not found either)."""

    status, code = 404, "source_not_found"


class SourceNotDone(GatewayError, RuntimeError):
    """A source the parameters name is a job of the caller's that is not done."""

    status, code = 409, "source_not_done"


class SourceGone(GatewayError, RuntimeError):
    """A job's source was deleted, or made again, before or while the job ran."""

    status, code = 409, "source_deleted"


class AppNotOffered(GatewayError, RuntimeError):
    """A job's app, at the version it was planned with, is not offered by this gateway any more."""

    status, code = 409, "app_not_offered"


@dataclass(frozen=True)
class SourceRun:
    """A done job of the same owner that a job reads: its id, and when the run it reads finished."""

    job_id: str
    finished_at: str


@dataclass(frozen=True)
class JobWork:
    """What a job computes: its app, the parameters as planned (every default filled in), the array it writes and the results it reads."""

    app: str
    app_version: str
    parameters: dict[str, Any]
    output: Output
    # The parameter naming each source, and the source's run.
    sources: dict[str, SourceRun] = field(default_factory=dict)

    def to_stored(self) -> dict[str, Any]:
        return {
            "app": self.app, "app_version": self.app_version, "parameters": self.parameters, "output": self.output.to_json(),
            "sources": {name: asdict(source) for name, source in self.sources.items()},
        }  # fmt: skip

    def compared(self, ttl: int | None) -> dict[str, Any]:
        """What a repeat of the job's id is compared with: the app, each parameter, and the ttl."""
        return {"app": self.app, **self.parameters, "ttl": ttl}


@dataclass(frozen=True)
class SourceResult:
    """A done job's result as a job reads it: its run, and its array as stored."""

    job_id: str
    finished_at: str
    output: Output
    # Where its result is under the results URL.
    place: str


class _Planning:
    """The :class:`~science_gateway.apps.PlanContext` of one submission: the gateway's limits, and the caller's done jobs as sources."""

    def __init__(self, limits: Limits, find: Callable[[str], SourceResult | str | None]) -> None:
        self.limits = limits
        self._find = find

    def source(self, parameter: str, job_id: str) -> Source:
        found = self._find(job_id)
        if found is None:
            raise SourceNotFound(f"{parameter}: you have no job {job_id!r}")
        if isinstance(found, str):
            raise SourceNotDone(f"{parameter}: job {job_id!r} is {found}; a source must be done")
        return Source(found.job_id, found.output, found.finished_at)


def plan_work(app: App, parameters: dict[str, Any], limits: Limits, find: Callable[[str], SourceResult | str | None]) -> JobWork:
    """The work of a job of ``app`` with ``parameters`` (accepted by its schema), planned by the app.

    ``find`` gives the caller's done job of an id, the status of one that is not done, or None.
    Whatever the app, its output is then held to the gateway's size limits (413).
    """
    plan = app.plan(parameters, _Planning(limits, find))
    within_limits(plan.output, limits)
    sources = {name: SourceRun(source.job_id, source.finished_at) for name, source in plan.sources.items()}
    return JobWork(app.name, app.version, plan.parameters, plan.output, sources)


@dataclass(frozen=True)
class Runnable:
    """A job's work made ready to run: its app, its plan, and the key of each source's group."""

    app: App
    plan: Plan
    source_groups: dict[str, str]


def runnable(work: JobWork, apps: Apps, find: Callable[[str], SourceResult | str | None]) -> Runnable:
    """The work of a job about to run, with its app and its sources as they are now.

    :class:`AppNotOffered` when the app, at the version planned, is not here;
    :class:`SourceGone` when a source is not the done run it was planned with.
    """
    offered = {app.name: app for app in apps}
    app = offered.get(work.app)
    if app is None or app.version != work.app_version:
        here = f"it offers version {app.version}" if app is not None else f"its apps are {', '.join(offered)}"
        raise AppNotOffered(f"app {work.app!r} version {work.app_version} is not offered by this gateway ({here}); submit the job again")
    sources: dict[str, Source] = {}
    groups = {}
    for name, run in work.sources.items():
        found = find(run.job_id)
        if not isinstance(found, SourceResult) or found.finished_at != run.finished_at:
            raise SourceGone(f"its source {run.job_id!r} ({name}) was deleted or made again before the job ran")
        sources[name] = Source(found.job_id, found.output, found.finished_at)
        groups[name] = found.place
    return Runnable(app, Plan(work.parameters, work.output, sources), groups)

