"""What a job's callers are told when it is not to be had: each a status and a code of the error vocabulary."""

from __future__ import annotations

from typing import Any

from .admission import RETRY_AFTER_SECONDS
from .errors import GatewayError


class JobAlreadyExists(GatewayError, RuntimeError):
    """The caller's id names a job with other parameters, or a result is stored there without a job."""

    status, code = 409, "job_exists"

    def __init__(self, job_id: str, url: str, differing: dict[str, dict[str, Any]] | None = None) -> None:
        if differing:
            said = "; ".join(f"{name} is {values['existing']!r}, not {values['requested']!r}" for name, values in differing.items())
            what = f"job {job_id!r} exists with other parameters ({said}); submit it with its own parameters to get it, or choose another id"
        else:
            what = f"a result is stored at {url} without a job; results are never overwritten, choose another id"
        super().__init__(what)
        self.url = url
        self.differing = differing or {}

    def details(self) -> dict[str, Any]:
        return {"url": self.url} | ({"differences": self.differing} if self.differing else {})


class JobNotFound(GatewayError, LookupError):
    """The caller has no job of this id (another owner's job is not found either)."""

    status, code = 404, "job_not_found"


class JobInterrupted(GatewayError, RuntimeError):
    """The gateway stopped while the job ran; it may be submitted again."""

    status, code = 503, "interrupted"


INTERRUPTED = {"code": JobInterrupted.code, "message": "the gateway stopped while this job was running; submit it again"}


class GatewayStopping(GatewayError, RuntimeError):
    """The gateway is shutting down and starts no more jobs."""

    status, code = 503, "gateway_stopping"

    def headers(self) -> dict[str, str]:
        # The next pod takes submissions within about this long.
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}


# A running job of a replica whose lease lapsed: its tasks stopped with it, or can no longer be told to stop.
REPLICA_LOST = {"code": JobInterrupted.code, "message": "the gateway replica running this job stopped renewing its lease; submit it again"}


class ReplicaStandby(GatewayError, RuntimeError):
    """Another replica holds this store, which has no conditional writes: this one waits until that one's lease lapses."""

    status, code = 503, "replica_standby"
    retry_after = 10

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class JobStillStopping(GatewayError, RuntimeError):
    """The job was cancelled at another replica, whose tasks for it have not stopped yet: its id is not taken again before."""

    status, code = 503, "job_stopping"
    retry_after = 5

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
