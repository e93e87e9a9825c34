"""Where the gateway is and how long to keep trying: from the arguments, else from the environment a hub sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigurationError

# Set in every notebook of a hub deployed with the gateway's jupyterhub_values.yaml.
URL_VARIABLE = "GATEWAY_URL"
TOKEN_VARIABLE = "JUPYTERHUB_API_TOKEN"

# Seconds the client keeps retrying a request that got 429 or 503 (after each Retry-After) or, where the request is
# idempotent, a connection error: past it, the error is raised.
DEFAULT_RETRY_FOR = 60.0
# Seconds to wait for a connection and for each read of an answer (the event stream's reads wait longer: events.py).
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Options:
    url: str
    # Never in a repr: an Options printed, or shown in a traceback, shows no token.
    token: str | None = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    retry_for: float = DEFAULT_RETRY_FOR


def resolve(
    url: str | None,
    token: str | None,
    timeout: float = DEFAULT_TIMEOUT,
    retry_for: float = DEFAULT_RETRY_FOR,
    environ: Mapping[str, str] | None = None,
) -> Options:
    """The options of a Gateway: each argument given, else its variable. A token is optional (a gateway without auth)."""
    environ = os.environ if environ is None else environ
    url = url or environ.get(URL_VARIABLE)
    if not url:
        raise ConfigurationError(
            f"no gateway address: pass Gateway(url=...) or set {URL_VARIABLE} (a hub deployed with the gateway sets it in every notebook;"
            " `make run` serves http://127.0.0.1:8000)"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"the gateway address must start with http:// or https://, got {url!r} (from the url argument or {URL_VARIABLE})")
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if retry_for < 0:
        raise ConfigurationError(f"retry_for must be zero or more seconds, got {retry_for!r}")
    return Options(url.rstrip("/"), token or environ.get(TOKEN_VARIABLE) or None, timeout, retry_for)
