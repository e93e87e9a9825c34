"""The kubelet's probes on a port of their own, answered by a thread of their own.

gunicorn's request threads serve requests in the order they arrive: when a
workshop's requests arrive by the hundred, a probe on the main port waits its
turn behind them (2.2 s with 200 callers, measured), and a liveness probe that
times out restarts the pod and fails every running job. On
``GATEWAY_PROBE_ADDRESS`` ``/healthz`` and ``/readyz`` never queue behind a
request, and answer from memory (``readiness.py``). The main port serves them
too, for people and scripts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A probe's path -> its HTTP status and JSON body; None for a path that is no probe.
ProbeAnswers = Callable[[str], tuple[int, dict[str, Any]] | None]


class ProbeServer:
    """An HTTP server for the probes alone, in a daemon thread of the gateway's process."""

    def __init__(self, address: str, answers: ProbeAnswers) -> None:
        host, _, port = address.rpartition(":")

        class ProbeHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = answers(self.path.split("?", 1)[0])
                status, body = answer or (404, {"error": {"code": "not_found", "message": "this port serves /healthz and /readyz"}})
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                # A probe every few seconds would drown the access log; gunicorn's keeps the requests.
                pass

        self._server = ThreadingHTTPServer((host, int(port)), ProbeHandler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="probe-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
