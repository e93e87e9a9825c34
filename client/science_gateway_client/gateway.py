"""The gateway, from Python: ``Gateway()`` reads ``GATEWAY_URL`` and ``JUPYTERHUB_API_TOKEN``, as a hub sets them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import requests

from .jobs import Job
from .options import DEFAULT_RETRY_FOR, DEFAULT_TIMEOUT, resolve
from .transport import Transport

# The gateway's rule for ids: 1 to 128 letters, digits, '.', '_' and '-', not starting with '.'.
JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
PAGE_SIZE = 200


def new_job_id(app: str) -> str:
    """An id the client picks, so that a submission sent twice (a retry after a lost answer) is one job: ``<app>-<12 hex>``."""
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", app).strip("-")[:40] or "job"
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Gateway:
    """A science gateway, at ``url`` (else ``GATEWAY_URL``) with ``token`` (else ``JUPYTERHUB_API_TOKEN``; none is sent without).

    ``timeout``: seconds to wait for a connection and for each answer. ``retry_for``: seconds a request is retried
    after 429 and 503 (as ``Retry-After`` says) and, for idempotent requests, after connection errors (60 by default;
    0 never retries). ``session``: a ``requests.Session`` of your own (proxies, certificates).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_for: float = DEFAULT_RETRY_FOR,
        session: requests.Session | None = None,
    ) -> None:
        self.options = resolve(url, token, timeout, retry_for)
        self._transport = Transport(self.options, session)

    @property
    def url(self) -> str:
        return self.options.url

    def __repr__(self) -> str:
        return f"<Gateway {self.url}>"

    def close(self) -> None:
        self._transport.session.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def apps(self) -> list[dict[str, Any]]:
        """The apps this gateway offers: ``name``, ``version``, ``description`` and the JSON Schema of their ``parameters``."""
        return list(self._transport.json("GET", "/apps", idempotent=True)["apps"])

    def submit(
        self, app: str = "random-array", job_id: str | None = None, *, ttl: int | None = None, parameters: dict[str, Any] | None = None, **more: Any
    ) -> Job:
        """Submit a job of ``app`` with these parameters (``parameters=`` and keywords together): the job, queued or done.

        Without ``job_id`` the client picks one (``new_job_id``). A job id names one job: submitting the same id with
        the same parameters again gives the same job back (a ``done`` one at once), which is what makes this request
        safe to retry after a connection error; the same id with other parameters is ``GatewayRefused`` ``job_exists``.
        ``ttl``: seconds its result is kept once finished.
        """
        job_id = job_id if job_id is not None else new_job_id(app)
        body: dict[str, Any] = {"app": app, "parameters": {**(parameters or {}), **more}, "job_id": job_id}
        if ttl is not None:
            body["ttl"] = ttl
        record = self._transport.json("POST", "/jobs", idempotent=True, expected=(200, 202), json=body)
        return Job(self._transport, record)

    def job(self, job_id: str, owner: str | None = None) -> Job:
        """Your job of this id (an admin: ``owner``'s), its record fetched now; ``JobNotFound`` when there is none."""
        path = f"/jobs/{quote(job_id, safe='')}"
        if owner is not None:
            path = f"/users/{quote(owner, safe='')}{path}"
        return Job(self._transport, self._transport.json("GET", path, idempotent=True))

    def jobs(self, status: str | None = None, page_size: int = PAGE_SIZE) -> Iterator[Job]:
        """Every job of yours (an admin's: everyone's), newest first, page after page; ``status`` keeps one status."""
        params: dict[str, Any] = {"limit": page_size}
        if status is not None:
            params["status"] = status
        while True:
            page = self._transport.json("GET", "/jobs", idempotent=True, params=params)
            for record in page["jobs"]:
                yield Job(self._transport, record)
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def usage(self) -> dict[str, Any]:
        """Your ``stored_bytes`` (done, queued and running jobs), their number of ``jobs``, and ``quota_bytes`` (None: no quota)."""
        return dict(self._transport.json("GET", "/usage", idempotent=True))
