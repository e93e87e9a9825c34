"""The gateway served at two roots: its own (``http://gateway-svc/jobs``) and the hub's proxy's prefix.

JupyterHub's proxy (configurable-http-proxy) serves a service registered with a
``url`` at ``/services/<name>/`` on the hub's own address, and forwards each
request with its full path, prefix included. Notebooks and curl keep calling the
gateway's Service without it. This WSGI middleware moves the prefix, when a
request's path starts with it, from ``PATH_INFO`` to ``SCRIPT_NAME``: the routes
see the same paths either way, and every URL Flask makes (``url_for``: the
page's links, a record's ``http_url``, a ``Location``, the login's return path)
carries the prefix exactly when the request came through it.

The environ is changed in place, so that gunicorn's access log, which reads the
same dict after the response, sees the path as the app routed it
(``access_log.py`` hides the OAuth callback's query by that path).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def prefix_of(service_name: str) -> str:
    """JupyterHub's prefix of a service at the hub's root: ``/services/<name>/``."""
    return f"/services/{service_name}/"


class ServicePrefix:
    """Serves ``app`` at ``/`` and at ``prefix`` (which ends in ``/``), the prefix then being the request's script root.

    ``public_origin`` (``https://hub.example.org``), when given, is the scheme and host of every URL made for a
    request that came through the prefix: the hub's proxy reaches the pod over plain HTTP from an address whose
    forwarded headers gunicorn does not believe, and a record's ``http_url`` must name what the browser or
    notebook reached, ``https`` included.
    """

    def __init__(self, app: WSGIApplication, prefix: str, public_origin: str | None = None) -> None:
        if not prefix.startswith("/") or not prefix.endswith("/") or prefix == "/":
            raise ValueError(f"a service prefix starts and ends with '/', such as /services/science-gateway/, got {prefix!r}")
        self.app = app
        self.prefix = prefix
        self._bare = prefix.rstrip("/")
        self._public = urlsplit(public_origin) if public_origin else None

    def __call__(self, request: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # ``request`` is the request's WSGI environ, not the process's environment.
        path = request.get("PATH_INFO", "")
        if path == self._bare or path.startswith(self.prefix):
            request["SCRIPT_NAME"] = request.get("SCRIPT_NAME", "") + self._bare
            # The prefix alone (no slash) is the page, as its own root.
            request["PATH_INFO"] = path[len(self._bare) :] or "/"
            if self._public is not None:
                request["wsgi.url_scheme"], request["HTTP_HOST"] = self._public.scheme, self._public.netloc
        return self.app(request, start_response)
