"""``make run``: the embedded S3 server and the gateway under gunicorn, on loopback.

Data is kept under ``./.data/`` (one directory per bucket). Ctrl-C stops
everything this started, the gateway's Dask cluster included.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from devtools.gunicorn_gateway import PROJECT, start_gunicorn_gateway
from devtools.local_s3 import start_local_s3
from devtools.processes import stop_process

# Loopback-only development credentials for the embedded S3 server.
DEV_ACCESS_KEY = "gateway-dev-access-key"
DEV_SECRET_KEY = "gateway-dev-secret-key"
BUCKET = "gateway-results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="gateway port on 127.0.0.1 (default 8000)")
    parser.add_argument("--s3-port", type=int, default=9000, help="S3 server port on 127.0.0.1 (default 9000)")
    parser.add_argument("--data-dir", type=Path, default=PROJECT / ".data", help="where the S3 objects are kept")
    args = parser.parse_args()
    # Ctrl-C stops everything even when started from a shell that ignores SIGINT for what it starts
    # (a non-interactive shell's background jobs inherit the signal ignored, and Python keeps that).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    args.data_dir.mkdir(parents=True, exist_ok=True)
    s3 = start_local_s3(
        args.data_dir,
        (BUCKET,),
        access_key=DEV_ACCESS_KEY,
        secret_key=DEV_SECRET_KEY,
        port=args.s3_port,
        log_file=args.data_dir / "s3-server.log",
    )
    environ = {**os.environ, **s3.environ(), "GATEWAY_RESULTS_URL": f"s3://{BUCKET}"}
    gateway = None
    try:
        # Ready before it returns: the curl line printed below should work the moment it is read.
        gateway = start_gunicorn_gateway(environ, port=args.port)
        s3_exports = " ".join(f"{name}={value}" for name, value in s3.environ().items())
        print(
            f"\nS3 server:  {s3.endpoint_url}  bucket {BUCKET}, data in {args.data_dir}\n"
            f"S3 access:  export {s3_exports}\n"
            f"Try:        curl http://127.0.0.1:{args.port}/submit_job/my-first-job\n"
            f"Readiness:  curl http://127.0.0.1:{args.port}/readyz\n"
            "Ctrl-C stops the gateway, its Dask cluster and the S3 server.\n",
            flush=True,
        )
        return gateway.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if gateway is not None:
            stop_process(gateway.process, timeout=60)
        s3.stop()


if __name__ == "__main__":
    sys.exit(main())
