"""Who is calling: a JupyterHub API token, checked with the hub by jupyterhub's own service-auth helper.

With ``GATEWAY_AUTH=none`` (the default, for a private cluster) every caller
is :data:`ANYONE` and sees every job. With ``GATEWAY_AUTH=jupyterhub`` each
request carries ``Authorization: token <t>`` (or ``Bearer <t>``); the hub says
whose token it is (``GET /hub/api/user`` with that token, cached for
``GATEWAY_AUTH_CACHE_SECONDS``), and the token must grant
``access:services!service=<JUPYTERHUB_SERVICE_NAME>``. Tokens are never logged.
The hub is asked once per token and cache period however many requests carry
it at once (a workshop's first minute, or a reader's concurrent range reads),
and the answers are kept in memory only as the tokens' SHA-256 digests.

A browser logs in through the hub instead (browser_login.py); the token it
keeps in a cookie is checked here like any other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import GatewayError
from .hub_calls import hub_loop
from .settings import Settings

if TYPE_CHECKING:
    from tornado.web import HTTPError


class NotAuthenticated(GatewayError):
    """No token, or one the hub does not know (wrong, expired or revoked)."""

    status, code = 401, "not_authenticated"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'token realm="JupyterHub"'}


class NotAuthorized(GatewayError):
    """A valid token that does not grant access to this service."""

    status, code = 403, "forbidden"


class AuthUnavailable(GatewayError):
    """The hub could not be asked about a token."""

    status, code = 503, "auth_unavailable"


def hub_failure(exc: HTTPError) -> str:
    """jupyterhub's reason for a failed call to the hub, without its advice to notebook servers, which names this host."""
    return str(exc.log_message).split("  ")[0]


def hub_refused(exc: HTTPError) -> bool:
    """Whether the hub answered the call with a 4xx other than 403, such as a refused OAuth code.

    jupyterhub reports every failure as a 500 or 502 and tells them apart only in the
    message: 4xx answers start it with "Failed to check authorization", without
    "(upstream problem)"; an unreachable hub and a 403 to the gateway's own token do not.
    """
    return exc.status_code == 500 and str(exc.log_message).startswith("Failed to check authorization")


@dataclass(frozen=True)
class Caller:
    """Whose request it is: ``name`` owns the jobs it submits; ``sees_all`` sees everyone's."""

    name: str | None
    sees_all: bool


# The caller of a gateway without authentication.
ANYONE = Caller(name=None, sees_all=True)


def owner_name(model: dict[str, Any]) -> str:
    """The name that owns a hub user's or service's jobs, as Dask Gateway names them for its clusters.

    A user's own name, unless it has a ":": then, like a service's, it is prefixed
    with its kind. A service ``x`` is ``service:x``, and a user named ``service:x``
    is ``user:service:x``: no user's name can pass for a service's, or another's.
    """
    kind, name = model.get("kind", "user"), model["name"]
    return name if kind == "user" and ":" not in name else f"{kind}:{name}"


class HubCallers:
    """Identifies callers by their JupyterHub API token, or by the cookie of a browser that logged in through the hub."""

    def __init__(self, settings: Settings) -> None:
        # Imported here: jupyterhub's helper takes 1.2 s to import (measured), which
        # a gateway without authentication need not spend. The import sets up
        # alembic, which would announce each of its plugins at INFO.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from jupyterhub.services.auth import HubAuth
        from tornado.web import HTTPError

        # The helper warns through tornado's application logger at every refused
        # token; the caller is told with a 401, and an operator need not be.
        logging.getLogger("tornado.application").setLevel(logging.ERROR)

        self.service_name = settings.jupyterhub_service_name
        self.admin_group = settings.admin_group
        self._token_pattern = HubAuth.auth_header_pat
        self._hub_error: type[HTTPError] = HTTPError
        self._hub = HubAuth(
            api_url=settings.jupyterhub_api_url,
            api_token=settings.jupyterhub_api_token,
            access_scopes={f"access:services!service={self.service_name}"},
        )
        self._loop = hub_loop()
        self._answers = TokenAnswers(settings.auth_cache_seconds)

    def caller(self, authorization: str | None, cookie_token: str | None = None) -> Caller:
        """The caller whose token is in this ``Authorization`` header (or, from a browser, its login cookie).

        Raise if there is none or the hub refuses it.
        """
        match = self._token_pattern.fullmatch((authorization or "").strip())
        token = match.group(1).strip() if match else cookie_token
        if not token:
            raise NotAuthenticated(
                "send a JupyterHub API token as 'Authorization: token <token>'; "
                "in a JupyterHub notebook it is in JUPYTERHUB_API_TOKEN"
            )
        model = self._answers.get(token, self._ask_hub)
        if model is None:
            raise NotAuthenticated("JupyterHub does not accept this token: it is wrong, expired or revoked")
        if not self._hub.check_scopes(self._hub.access_scopes, model):
            raise NotAuthorized(
                f"{model['name']}'s token does not grant access:services!service={self.service_name}. "
                "A notebook's token (JUPYTERHUB_API_TOKEN) has the scopes of the hub's `server` role that its user holds: "
                "the hub's administrator adds this scope to the `server` and `user` roles "
                "(zero-to-jupyterhub: hub.loadRoles.server.scopes and hub.loadRoles.user.scopes, as jupyterhub_values.yaml does)"
            )
        return Caller(name=owner_name(model), sees_all=self.admin_group in model.get("groups", []))

    def _ask_hub(self, token: str) -> dict[str, Any] | None:
        """The hub's model of the token's owner, with the token's scopes; None for a token it does not accept."""
        try:
            return self._loop.run(self._hub.user_for_token(token, use_cache=False, sync=False))
        except self._hub_error as exc:
            raise AuthUnavailable(f"cannot check the token with JupyterHub at {self._hub.api_url}: {hub_failure(exc)}") from None
        except TimeoutError:
            raise AuthUnavailable(f"cannot check the token with JupyterHub at {self._hub.api_url}: no answer in time") from None


class TokenAnswers:
    """What the hub said of each token, kept ``max_age`` seconds; one question per token at a time.

    Requests that carry a token the hub is being asked about wait for that
    answer instead of asking again. Tokens are kept only as SHA-256 digests, and
    at most ``MAX_TOKENS`` answers (the oldest go first), so a flood of made-up
    tokens costs bounded memory. A failed question is not kept: the next request asks again.
    """

    MAX_TOKENS = 10_000

    def __init__(self, max_age: float) -> None:
        self._max_age = max_age
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._asking: dict[str, Future[dict[str, Any] | None]] = {}

    def get(self, token: str, ask: Callable[[str], dict[str, Any] | None]) -> dict[str, Any] | None:
        digest = hashlib.sha256(token.encode("utf8", "replace")).hexdigest()
        with self._lock:
            kept = self._answers.get(digest)
            if kept is not None and kept[0] > time.monotonic():
                return kept[1]
            pending = self._asking.get(digest)
            asker = pending is None
            if pending is None:
                pending = self._asking[digest] = Future()
        if not asker:
            return pending.result()
        try:
            answer = ask(token)
        except BaseException as exc:
            with self._lock:
                del self._asking[digest]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._asking[digest]
            self._answers[digest] = (time.monotonic() + self._max_age, answer)
            self._answers.move_to_end(digest)
            while len(self._answers) > self.MAX_TOKENS:
                self._answers.popitem(last=False)
        pending.set_result(answer)
        return answer


# Where the deployment takes the gateway's own token from (deploy_gateway.yaml).
TOKEN_SOURCE = "zero-to-jupyterhub's `hub` Secret, key hub.services.science-gateway.apiToken"


def why_dask_gateway_refused(api_url: str | None, token: str) -> str:
    """Why Dask Gateway refused the gateway's JupyterHub token, as the hub tells it (Dask Gateway says only 401)."""
    if not token:
        return f"JUPYTERHUB_API_TOKEN is empty; the deployment takes the gateway's JupyterHub token from {TOKEN_SOURCE}"
    unknown = "it is revoked, expired or wrong, or lacks access:services!service=dask-gateway"
    if api_url is None:
        return f"JupyterHub did not accept the token in JUPYTERHUB_API_TOKEN: {unknown} (set JUPYTERHUB_API_URL and the gateway asks the hub which)"
    request = urllib.request.Request(f"{api_url}/user", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            model = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return (
                "JupyterHub did not accept the token in JUPYTERHUB_API_TOKEN: it is revoked, expired or wrong; "
                f"the deployment takes it from {TOKEN_SOURCE}, which the hub's `helm upgrade` writes"
            )
        return f"JupyterHub did not accept the token in JUPYTERHUB_API_TOKEN: {unknown} (the hub answered {exc.code})"
    except (OSError, ValueError) as exc:
        return f"JupyterHub did not accept the token in JUPYTERHUB_API_TOKEN: {unknown} (the hub at {api_url} did not answer: {exc})"
    owner = f"{model.get('kind', 'user')} {model.get('name')!r}"
    if not any(scope.startswith("access:services") for scope in model.get("scopes", [])):
        return (
            f"JupyterHub knows the token in JUPYTERHUB_API_TOKEN ({owner}), but it lacks access:services!service=dask-gateway; "
            "give that service or user a role with that scope"
        )
    return (
        f"JupyterHub knows the token in JUPYTERHUB_API_TOKEN ({owner}) and its access:services scopes, yet Dask Gateway "
        "refused it; check the service name Dask Gateway checks (JupyterHubAuthenticator.jupyterhub_service_name)"
    )
