"""A browser's login through JupyterHub (OAuth), and what its cookies may and may not do.

A browser has no token to send. With ``JUPYTERHUB_OAUTH_CALLBACK_URL`` set, the
jobs page sends it to the hub to log in; the hub sends it back to the callback
with a code, which the gateway trades for a token of the caller (jupyterhub's
``HubOAuth``). The token is kept encrypted in an HttpOnly cookie and checked
like any other, for ``GATEWAY_LOGIN_MAX_AGE`` at most: the cookie's Max-Age, and
the encryption's own time stamp, which a kept copy of the cookie cannot outlive.
Logging out clears the cookie and sends the browser to the hub's logout, which
ends the hub's login and deletes the tokens it gave this browser.

Nothing of a login is kept in the process: its state travels in a cookie and
through the hub, and must come back the same, so anonymous requests cost no
memory and any replica can finish a login another began. With an ``https``
callback both cookies are ``Secure`` and ``__Host-`` prefixed (bound to this
host, never set by a sibling domain), whatever proxy headers say.

Through the hub's proxy (a callback under ``JUPYTERHUB_SERVICE_PREFIX``, on
the hub's own address) the cookies' ``Path`` is that prefix: the hub's and the
users' servers share the address, and a browser sends the login to the
gateway's paths alone. ``__Host-`` requires ``Path=/``, so there they are
``__Secure-`` prefixed instead (never set over plain HTTP).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .auth import AuthUnavailable, NotAuthenticated, hub_failure, hub_refused
from .errors import GatewayError
from .hub_calls import hub_loop
from .settings import OAUTH_CALLBACK_PATH, Settings

if TYPE_CHECKING:
    from werkzeug.datastructures import Headers

# How long a browser may take at the hub's login page.
LOGIN_PAGE_SECONDS = 600
# Where the hub sends a browser back with its code (the path of JUPYTERHUB_OAUTH_CALLBACK_URL), and where a browser logs out.
CALLBACK_PATH = OAUTH_CALLBACK_PATH
LOGOUT_PATH = "/logout"


class CrossSiteRequest(GatewayError):
    """A request another site made the browser send: its login cookie does not count."""

    status, code = 403, "cross_site_request"


def safe_return_path(path: str | None, home: str = "/") -> str:
    """``path`` if it is a path of this service, else ``home``: a login never ends on another site.

    Browsers drop tabs and newlines from URLs and read ``\\`` as ``/``, so
    ``/\\t/evil.example`` would become ``//evil.example``: any control
    character or backslash is refused, not cleaned.
    """
    if not path or any(ord(char) < 0x20 or ord(char) == 0x7F or char == "\\" for char in path):
        return home
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/") or path.startswith("//"):
        return home
    return path


class BrowserLogin:
    """The OAuth login of a browser with the hub, and the cookies that keep it."""

    def __init__(self, settings: Settings) -> None:
        from jupyterhub.services.auth import HubOAuth
        from tornado.web import HTTPError

        assert settings.oauth_callback_url is not None
        callback = urlsplit(settings.oauth_callback_url)
        self.origin = f"{callback.scheme}://{callback.netloc}"
        self._secure = callback.scheme == "https"
        # Served through the hub's proxy: the cookies go to the gateway's prefix alone (no trailing slash: a browser
        # then sends them to the prefix itself and everything below it, and to no sibling such as <prefix>-other).
        self.served_through_hub = through_the_hub = callback.path != CALLBACK_PATH
        self.path = settings.service_prefix.rstrip("/") if through_the_hub else "/"
        # Where a login whose return path is lost comes back to: the page, at the root the callback is under.
        self.home = settings.service_prefix if through_the_hub else "/"
        # JupyterHub names a service's OAuth client "service-<name>".
        self._hub: Any = HubOAuth(
            api_url=settings.jupyterhub_api_url,
            api_token=settings.jupyterhub_api_token,
            oauth_client_id=settings.oauth_client_id or f"service-{settings.jupyterhub_service_name}",
            oauth_redirect_uri=settings.oauth_callback_url,
            hub_host=settings.jupyterhub_host,
        )
        self._hub_error: type[HTTPError] = HTTPError
        self.max_age = settings.login_max_age
        # The hub's own logout page, on the hub's host as browsers reach it (JupyterHub's singleuser servers send theirs there too).
        self.logout_url = f"{self._hub.hub_host}{self._hub.hub_prefix}logout"
        hub = urlsplit(settings.jupyterhub_host)
        self.hub_origin = f"{hub.scheme}://{hub.netloc}" if hub.netloc else ""
        self._loop = hub_loop()
        # A cookie read from a browser (or its disk) is no hub token: the key is derived
        # from the gateway's own token, which every replica holds and no browser sees.
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"science-gateway login cookie").derive(
            settings.jupyterhub_api_token.encode()
        )
        self._cipher = Fernet(base64.urlsafe_b64encode(key))
        prefix = ("__Secure-" if through_the_hub else "__Host-") if self._secure else ""
        self.token_cookie = f"{prefix}{self._hub.cookie_name}"
        self.state_cookie = f"{prefix}{self._hub.state_cookie_name}"

    @property
    def cookie_options(self) -> dict[str, Any]:
        """The attributes of both cookies: sent to the gateway's paths on this host, never to a script or another site's request."""
        return {"path": self.path, "httponly": True, "samesite": "Lax", "secure": self._secure}

    @property
    def token_cookie_options(self) -> dict[str, Any]:
        """The token cookie's attributes: those of both, and a browser keeps it no longer than the login lasts."""
        return {**self.cookie_options, "max_age": self.max_age}

    def start(self, next_path: str) -> tuple[str, str]:
        """Where to send the browser to log in, and the value of the state cookie to set meanwhile."""
        state = base64.urlsafe_b64encode(
            json.dumps({"nonce": secrets.token_urlsafe(16), "next": self._return_path(next_path)}).encode()
        ).decode()
        return f"{self._hub.login_url}&{urlencode({'state': state})}", state

    def finish(self, code: str | None, state: str | None, cookie_state: str | None) -> tuple[str, str]:
        """The token cookie's value for this OAuth ``code``, and the path to return to; raise unless the states match."""
        if not code or not state or not cookie_state or not hmac.compare_digest(state, cookie_state):
            raise NotAuthenticated("the login through JupyterHub did not come back as it left; open the page again")
        try:
            next_path = json.loads(base64.urlsafe_b64decode(state.encode()))["next"]
        except (ValueError, TypeError, KeyError, binascii.Error):
            next_path = self.home
        try:
            token = self._loop.run(self._hub.token_for_code(code, sync=False))
        except self._hub_error as exc:
            if hub_refused(exc):
                raise NotAuthenticated(f"JupyterHub did not complete the login ({hub_failure(exc)}); open the page again") from None
            raise AuthUnavailable(f"cannot complete the login with JupyterHub at {self._hub.api_url}: {hub_failure(exc)}") from None
        except TimeoutError:
            raise AuthUnavailable(f"cannot complete the login with JupyterHub at {self._hub.api_url}: no answer in time") from None
        return self._cipher.encrypt(token.encode()).decode(), self._return_path(next_path)

    def _return_path(self, path: str | None) -> str:
        """A safe return path under the root the callback is under (through the hub, a path outside it is the hub's)."""
        path = safe_return_path(path, self.home)
        return path if path.startswith(self.home) or path == self.path else self.home

    def token(self, cookie: str | None) -> str | None:
        """The hub token in a token cookie; None for no cookie, one this gateway did not make, or one older than the login lasts."""
        if not cookie:
            return None
        try:
            return self._cipher.decrypt(cookie.encode(), ttl=self.max_age).decode()
        except (InvalidToken, UnicodeError):
            return None

    def refuse_cross_site(self, headers: Mapping[str, str] | Headers) -> None:
        """Raise :class:`CrossSiteRequest` when the browser says another site made this request."""
        origin = headers.get("Origin")
        if headers.get("Sec-Fetch-Site") == "cross-site" or (origin is not None and origin != self.origin):
            raise CrossSiteRequest(
                f"a request from another site ({origin or 'cross-site'}) does not carry this browser's login; "
                f"open the jobs page at {self.origin}, or send a token in the Authorization header"
            )
