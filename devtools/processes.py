"""Starting and stopping the local servers that ``make run`` and the tests use."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # A server left behind by a killed test run would hold its port and burn CPU.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_process(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start a server that is sent SIGTERM if this process dies.

    It runs in a session of its own, so that a Ctrl-C at the terminal reaches
    only this process, which then stops its servers in order: a SIGINT to every
    process at once would kill Dask workers under a gateway still shutting down.
    Its output goes to ``log_file``, or to this process's own output without one.
    """
    output = open(log_file, "ab") if log_file else None
    try:
        return subprocess.Popen(
            list(command),
            stdout=output,
            stderr=subprocess.STDOUT if log_file else None,
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
    finally:
        if output:
            output.close()


def wait_while_running(answers: Callable[[], bool], process: subprocess.Popen, timeout: float, what: str) -> None:
    """Return once ``answers()`` is true; fail if ``process`` exits first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode} before {what}")
        if answers():
            return
        time.sleep(0.05)
    raise TimeoutError(f"no {what} within {timeout} s")


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Return once something listens on 127.0.0.1:port; fail if the process exits first."""

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_while_running(listening, process, timeout, f"listening on 127.0.0.1:{port}")


def stop_process(process: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` s; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout)
