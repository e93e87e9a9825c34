"""HTTP to the gateway: one session with the token, the retries, and the gateway's JSON errors as exceptions.

Retries, each within ``retry_for`` seconds from the request's first attempt (60 s by default):

- **429 and 503 with ``Retry-After``**: the request is sent again after the seconds it says, for any method: the
  gateway keeps nothing of a request it refuses with these (a limit reached, the gateway stopping, or an outage of
  the results store or the cluster, ``error.dependency`` naming it). A ``Retry-After`` that would end past ``retry_for`` is not
  waited for: the error is raised at once (``TooManyRequests`` for 429), with the gateway's advice in ``retry_after``.
- **503 without ``Retry-After``** (a proxy's, or a hub the gateway cannot ask about the token): again after 1, 2, 4,
  ... up to 10 s.
- **A connection error** (refused, reset, timed out): again after 1, 2, 4, ... s, only for requests marked
  idempotent. ``GET`` is; ``POST /jobs`` is when it names its ``job_id`` (the client always does: see gateway.py);
  ``DELETE`` is not (a second ``DELETE`` of a job that the first cancelled deletes it).

Past them: ``GatewayUnavailable`` (no connection, 5xx) or ``GatewayRefused`` (4xx).
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import requests

from . import __version__
from .auth import GatewayToken
from .errors import GatewayRefused, GatewayUnavailable, JobNotFound, NotAuthenticated, TooManyRequests
from .options import TOKEN_VARIABLE, Options

logger = logging.getLogger("science_gateway_client")

RETRIED_STATUSES = (429, 503)
# Backoff of the retries that have no Retry-After: 1, 2, 4, 8, 10, 10, ... seconds.
FIRST_BACKOFF = 1.0
LONGEST_BACKOFF = 10.0


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's seconds (a number, or an HTTP date); None when there is none or it is not one."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_of(response: requests.Response) -> dict[str, Any]:
    """The gateway's ``error`` object of an answer, or one made of its status for an answer that has none (a proxy's)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    text = (response.text or "").strip().splitlines()
    return {"code": f"http_{response.status_code}", "message": f"{response.status_code} {response.reason}" + (f": {text[0][:200]}" if text else "")}


def _reason(exc: requests.RequestException) -> str:
    """What went wrong, without requests' wrapping (``Max retries exceeded with url: ...``)."""
    wrapped = exc.args[0] if exc.args else exc
    return str(getattr(wrapped, "reason", wrapped))


class Transport:
    """Requests to one gateway, with its token, its timeouts and the retries above."""

    def __init__(self, options: Options, session: requests.Session | None = None) -> None:
        self.options = options
        self.session = session or requests.Session()
        self._auth = GatewayToken(options.url, options.token)
        self.session.headers.setdefault("User-Agent", f"science-gateway-client/{__version__}")

    def url(self, path: str) -> str:
        return f"{self.options.url}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        expected: Iterable[int] = (200,),
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        timeout: float | tuple[float, float] | None = None,
    ) -> requests.Response:
        """The answer, once its status is one of ``expected``; otherwise the error it is, after the retries."""
        expected = tuple(expected)
        deadline = time.monotonic() + self.options.retry_for
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.session.request(
                    method, self.url(path), auth=self._auth, json=json, params=params, headers=headers, stream=stream, timeout=timeout or self.options.timeout
                )
            except requests.RequestException as exc:
                wait = min(LONGEST_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1))
                if idempotent and time.monotonic() + wait <= deadline:
                    logger.info("no answer from %s (%s): trying again in %.0f s", self.options.url, type(exc).__name__, wait)
                    time.sleep(wait)
                    continue
                again = "" if idempotent else " (not retried: sending it again might do it twice)"
                raise GatewayUnavailable(
                    f"no answer from the gateway at {self.options.url} to {method} {path}{again}: {_reason(exc)}; check the address and that it runs"
                ) from exc
            if response.status_code in expected:
                return response
            if response.status_code in RETRIED_STATUSES:
                advised = retry_after_seconds(response.headers.get("Retry-After"))
                wait = advised if advised is not None else min(LONGEST_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1))
                if (advised is not None or response.status_code == 503) and time.monotonic() + wait <= deadline:
                    error = error_of(response)
                    logger.warning("the gateway answered %d %s: trying again in %.0f s", response.status_code, error.get("code"), wait)
                    response.close()
                    time.sleep(wait)
                    continue
                raise self.error(method, path, response, advised)
            raise self.error(method, path, response, None)

    def error(self, method: str, path: str, response: requests.Response, retry_after: float | None) -> Exception:
        """The exception of an answer the caller did not expect."""
        status = response.status_code
        error = error_of(response)
        response.close()
        said = f"{method} {path}: {status} {error.get('code')}: {error.get('message')}"
        if status >= 500:
            return GatewayUnavailable(f"the gateway failed {said}", status=status, error=error)
        if status in (401, 403):
            hint = "" if self.options.token else f"; no token was sent: set {TOKEN_VARIABLE} or pass Gateway(token=...)"
            return NotAuthenticated(f"the gateway refused {said}{hint}", status=status, error=error)
        if status == 404 and error.get("code") == "job_not_found":
            return JobNotFound(f"the gateway refused {said}", status=status, error=error)
        if status == 429:
            later = f"; it says to try again in {retry_after:.0f} s" if retry_after is not None else ""
            return TooManyRequests(f"the gateway refused {said}{later}", status=status, error=error, retry_after=retry_after)
        return GatewayRefused(f"the gateway refused {said}", status=status, error=error)

    def json(self, method: str, path: str, *, idempotent: bool, expected: Iterable[int] = (200,), **kwargs: Any) -> Any:
        response = self.request(method, path, idempotent=idempotent, expected=expected, **kwargs)
        return response.json() if response.content else None
