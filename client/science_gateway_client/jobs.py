"""A job of the gateway: its record, waiting for it (pushed events, or polling), its result, cancel and delete."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
import urllib3

from .auth import auth_headers, origin
from .errors import ConfigurationError, GatewayRefused, GatewayUnavailable, JobNotDone, MissingExtra, WaitTimeout, unsuccessful
from .events import EventParser
from .transport import Transport

if TYPE_CHECKING:
    import xarray

    from .progress import Progress

logger = logging.getLogger("science_gateway_client")

FINAL = ("done", "failed", "cancelled")
# The gateway sends a comment at least every 15 s: a stream silent for this long is cut, and resumed.
STREAM_READ_TIMEOUT = 45.0
# Reconnections of the event stream in a row that get no event before the client polls instead.
STREAM_ATTEMPTS = 5
# The server's advice until it gives its own (``retry:``), in seconds.
DEFAULT_RECONNECT = 2.0
# The stream is never retried on a refusal: the client polls instead.
ANY_STATUS = range(100, 600)

# The gateway answers a cancel or delete of a running job once its tasks have stopped (it waits up to 60 s
# for them) and its record is saved (up to 7.5 s of retries): a read timeout shorter than that would report
# a cancel that worked as a failure.
STOP_ANSWER_SECONDS = 180.0


class Job:
    """A job of yours (or, for an admin, anyone's), by its id.

    **Refresh semantics.** ``record`` is the last record the client received (from ``submit``, ``refresh``,
    ``wait``, ``cancel``, or the listing that gave this job): reading it sends no request. ``status`` is the
    current status: one ``GET`` unless the last record is ``done``, ``failed`` or ``cancelled``, which do not
    change (a finished job may still be deleted or expire: ``refresh()`` then raises ``JobNotFound``).
    ``refresh()`` always asks the gateway.
    """

    def __init__(self, transport: Transport, record: dict[str, Any]) -> None:
        self._transport = transport
        self._record = record
        self.job_id: str = record["job_id"]
        # The record's owner, where the gateway knows who calls: the job is then named /users/<owner>/jobs/<id>,
        # which reaches it for its owner and for admins alike.
        self.owner: str | None = record.get("owner")

    def __repr__(self) -> str:
        progress = self._record.get("progress") or {}
        done = f" {progress.get('chunks_written')}/{progress.get('chunks_total')} chunks" if progress else ""
        return f"<Job {self.job_id!r} {self._record.get('status')}{done}>"

    @property
    def path(self) -> str:
        job = f"/jobs/{quote(self.job_id, safe='')}"
        return f"/users/{quote(self.owner, safe='')}{job}" if self.owner else job

    @property
    def record(self) -> dict[str, Any]:
        """The last record received: no request (see the class's refresh semantics)."""
        return self._record

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``done``, ``failed`` or ``cancelled``: asked of the gateway unless already final."""
        if self._record.get("status") in FINAL:
            return str(self._record["status"])
        return str(self.refresh()["status"])

    @property
    def _stop_timeout(self) -> tuple[float, float]:
        """Connect as usual; read for as long as the gateway may take to stop a running job's tasks and save its record."""
        return (self._transport.options.timeout, max(self._transport.options.timeout, STOP_ANSWER_SECONDS))

    @property
    def http_url(self) -> str:
        """The result's Zarr group, as the gateway serves it (with the token).

        ``ConfigurationError`` when it is not on the gateway's own scheme, host and port: the token goes nowhere else.
        """
        url = str(self._record["http_url"])
        if origin(url) != origin(self._transport.options.url):
            raise ConfigurationError(
                f"job {self.job_id!r}'s http_url {url!r} is not on the gateway at {self._transport.options.url}, so your token is not sent "
                "there; give Gateway() the address the gateway's own answers name (GATEWAY_URL)"
            )
        return url

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec's options that read ``http_url`` with your token: ``zarr.open_group(job.http_url, storage_options=job.storage_options)``."""
        return {"headers": auth_headers(self._transport.options.token)}

    def refresh(self) -> dict[str, Any]:
        """The job's record, asked of the gateway now."""
        self._record = self._transport.json("GET", self.path, idempotent=True)
        return self._record

    def wait(self, progress: bool = True, timeout: float | None = None, poll_interval: float = 1.0) -> dict[str, Any]:
        """Until the job is done: its record. A progress bar of chunks written (``tqdm.auto``) unless ``progress=False``.

        Raises ``JobFailed`` or ``JobCancelled`` (``code``, ``message``, ``details`` of the job's error) when it ends
        otherwise, and ``WaitTimeout`` after ``timeout`` seconds (the job goes on). Follows the gateway's event stream,
        resuming a cut stream where it was (``Last-Event-ID``); polls the record every ``poll_interval`` seconds instead
        where the stream is refused (429: too many streams) or not served.
        """
        from .progress import Progress

        deadline = None if timeout is None else time.monotonic() + timeout
        with Progress(self, enabled=progress) as bar:
            bar.show(self._record)
            if self._record.get("status") not in FINAL:
                if not self._follow_events(bar, deadline):
                    self._poll(bar, deadline, poll_interval)
        if self._record["status"] != "done":
            raise unsuccessful(self._record)
        return self._record

    def _left(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"job {self.job_id!r} is still {self._record.get('status')} after the wait's timeout; wait again, or cancel it")
        return left

    def _poll(self, bar: Progress, deadline: float | None, interval: float) -> None:
        while True:
            self.refresh()
            bar.show(self._record)
            if self._record["status"] in FINAL:
                return
            left = self._left(deadline)
            time.sleep(interval if left is None else min(interval, left))

    def _follow_events(self, bar: Progress, deadline: float | None) -> bool:
        """Follow the job's event stream until its final event: True; False where the client must poll instead."""
        last_event_id: str | None = None
        reconnect = DEFAULT_RECONNECT
        failures = 0
        while True:
            # Each connection is parsed afresh (an event cut in half is dropped, as the standard says), from the last id.
            parser = EventParser()
            parser.last_event_id = last_event_id
            left = self._left(deadline)
            read_timeout = STREAM_READ_TIMEOUT if left is None else min(STREAM_READ_TIMEOUT, left)
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            try:
                response = self._transport.request(
                    "GET", f"{self.path}/events", idempotent=True, expected=ANY_STATUS,
                    headers=headers, stream=True, timeout=(self._transport.options.timeout, read_timeout),
                )  # fmt: skip
            except GatewayUnavailable as exc:
                logger.info("the event stream of job %s is unavailable (%s): polling instead", self.job_id, exc)
                return False
            if response.status_code == 204:
                # The final event was received already (Last-Event-ID at or past it).
                response.close()
                self.refresh()
                bar.show(self._record)
                return self._record["status"] in FINAL
            if response.status_code != 200 or not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                # 429 (too many streams), a gateway or proxy that serves no stream here, or any other refusal:
                # the record's own GET says what is wrong, if anything (a job not found, a token refused).
                logger.info("the gateway did not stream job %s's events (%d): polling instead", self.job_id, response.status_code)
                response.close()
                return False
            received = self._read_stream(response, parser, bar, deadline)
            last_event_id = parser.last_event_id
            reconnect = parser.retry / 1000 if parser.retry is not None else reconnect
            if self._record.get("status") in FINAL:
                return True
            failures = 0 if received else failures + 1
            if failures >= STREAM_ATTEMPTS:
                logger.info("the event stream of job %s ended %d times without an event: polling instead", self.job_id, failures)
                return False
            # Cut (a proxy's timeout, a gateway that stops): resume after the server's advice, from the last event.
            left = self._left(deadline)
            time.sleep(reconnect if left is None else min(reconnect, left))

    def _read_stream(self, response: requests.Response, parser: EventParser, bar: Progress, deadline: float | None) -> int:
        """Read a stream until it ends or is cut; the number of job events it gave."""
        received = 0
        try:
            with response:
                for chunk in _chunks(response):
                    for event in parser.feed(chunk):
                        if event.event != "job":
                            continue
                        try:
                            self._record = json.loads(event.data)
                        except ValueError:
                            logger.warning("an event of job %s is not JSON; skipped", self.job_id)
                            continue
                        received += 1
                        bar.show(self._record)
                        if self._record.get("status") in FINAL:
                            return received
                    left = self._left(deadline)
                    if left is not None:
                        _read_timeout(response, min(STREAM_READ_TIMEOUT, left))
        except WaitTimeout:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            logger.info("the event stream of job %s was cut (%s): resuming", self.job_id, type(exc).__name__)
        return received

    def cancel(self) -> dict[str, Any]:
        """Stop a queued or running job: its record, now ``cancelled``. A job that finished first is left as it is, its record returned.

        Sent to the gateway's ``POST /jobs/<id>/cancel``, which never deletes a job (its ``DELETE`` deletes
        one that has finished): so it is sent again after a lost answer, and a result that lands first is kept.
        """
        response = self._transport.request("POST", f"{self.path}/cancel", idempotent=True, expected=(200, 409), timeout=self._stop_timeout)
        body = response.json()
        # 409 job_finished: done or failed before the cancel came; the error holds its record.
        self._record = body if response.status_code == 200 else body["error"]["job"]
        return self._record

    def delete(self) -> None:
        """Delete the job: its result and record. A queued or running one is cancelled first (the gateway's first ``DELETE``), then deleted."""
        for _ in range(3):
            response = self._transport.request("DELETE", self.path, idempotent=False, expected=(200, 204), timeout=self._stop_timeout)
            if response.status_code == 204:
                return
            self._record = response.json()
        raise GatewayRefused(f"job {self.job_id!r} was cancelled but still not deleted after three DELETEs; delete it again")

    def open(self, **open_zarr_options: Any) -> xarray.Dataset:
        """The job's result as an ``xarray.Dataset`` (variable ``data``), read through the gateway with your token.

        Needs the ``[xarray]`` extra. The options go to ``xarray.open_zarr``. A job not yet done: ``JobNotDone``;
        a failed or cancelled one: ``JobFailed`` or ``JobCancelled``.
        """
        try:
            import xarray as xr
        except ImportError as exc:
            raise MissingExtra("job.open() needs xarray, zarr and fsspec: pip install 'science-gateway-client[xarray]'") from exc
        if self._record.get("status") != "done":
            self.refresh()
        status = self._record["status"]
        if status in ("failed", "cancelled"):
            raise unsuccessful(self._record)
        if status != "done":
            raise JobNotDone(f"job {self.job_id!r} is {status}: its result opens once it is done; job.wait() first")
        dataset: xarray.Dataset = xr.open_zarr(self.http_url, storage_options=self.storage_options, **open_zarr_options)
        return dataset


def _read_timeout(response: requests.Response, seconds: float) -> None:
    """The longest the next reads of a stream wait, so that a wait's timeout ends a silent stream in time (best effort)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.01))


def _chunks(response: requests.Response) -> Any:
    """The bytes of a streamed answer as they arrive (``read1``: whatever the socket has, not a full buffer)."""
    raw = response.raw
    while True:
        chunk = raw.read1(65536) if hasattr(raw, "read1") else raw.read(1)
        if not chunk:
            return
        yield chunk
