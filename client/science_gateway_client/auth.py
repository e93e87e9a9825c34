"""The token every request carries: JupyterHub's API token, as the gateway checks it (``Authorization: token <t>``)."""

from __future__ import annotations

from urllib.parse import urlsplit

import requests


def auth_headers(token: str | None) -> dict[str, str]:
    """The headers that authenticate a request, for the API and for fsspec's reads of a result alike; none without a token."""
    return {"Authorization": f"token {token}"} if token else {}


def origin(url: str) -> tuple[str, str | None, int | None]:
    """A URL's scheme, host and port (the scheme's own when it names none)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(scheme)


class GatewayToken(requests.auth.AuthBase):
    """The token on each request to the gateway's own scheme, host and port, and on no other.

    Given per request rather than kept in the session's headers, so that a session of the caller's own
    carries it nowhere else; requests drops it from a redirect to another host by itself.
    """

    def __init__(self, gateway_url: str, token: str | None) -> None:
        self._origin = origin(gateway_url)
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token and origin(str(request.url)) == self._origin:
            request.headers.update(auth_headers(self._token))
        return request

    def __repr__(self) -> str:
        return f"GatewayToken({'set' if self._token else 'none'})"
