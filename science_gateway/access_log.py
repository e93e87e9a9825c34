"""gunicorn's access log, without the secrets of a browser's login.

The hub sends a browser back to the OAuth callback with the login's one-time
``code`` and its ``state`` in the query, which gunicorn's access log would show
whole: whoever reads the log before the browser arrives could trade the code
for the user's token. The callback's query is left out of its line; every
other line is gunicorn's own.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from .browser_login import CALLBACK_PATH

HIDDEN_QUERY = "[hidden]"


class LoginSecretsHidden(Logger):
    """gunicorn's logger, whose access log line of the OAuth callback has no query."""

    def atoms(self, resp: Any, req: Any, request: dict[str, Any], request_time: Any) -> dict[str, Any]:
        # ``request`` is the request's WSGI environ, not the process's environment.
        # PATH_INFO is the path as the app routes it, percent-decoding and all.
        if request.get("PATH_INFO") == CALLBACK_PATH and request.get("QUERY_STRING"):
            path = request["RAW_URI"].partition("?")[0]
            request = {**request, "QUERY_STRING": HIDDEN_QUERY, "RAW_URI": f"{path}?{HIDDEN_QUERY}"}
        return super().atoms(resp, req, request, request_time)
