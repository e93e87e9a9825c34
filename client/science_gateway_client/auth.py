"""The token every request carries: JupyterHub's API token, as the gateway checks it (``Authorization: token <t>``)."""

from __future__ import annotations


def auth_headers(token: str | None) -> dict[str, str]:
    """The headers that authenticate a request, for the API and for fsspec's reads of a result alike; none without a token."""
    return {"Authorization": f"token {token}"} if token else {}


def redacted(token: str | None) -> str:
    """A token as the client may show it: never the token itself."""
    return "none" if not token else f"set ({len(token)} characters)"
