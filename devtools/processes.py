"""Starting and stopping the local servers that ``make run`` and the tests use."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psutil

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


def executable_beside_python(name: str, wheel: str) -> str:
    """A program a wheel installs beside this Python (or found on PATH)."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found; install the {wheel} wheel (make install)")
    return found


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
            # The program alone: the other arguments may hold a server's keys.
            program = str(process.args[0]) if isinstance(process.args, list) else "the server"
            raise RuntimeError(f"{program} exited with code {process.returncode} before {what}")
        if answers():
            return
        time.sleep(0.05)
    raise TimeoutError(f"no {what} within {timeout} s")


class PortTaken(RuntimeError):
    """Another process listens on the port a server was to use: free_port() found it free only a moment before."""


def _listeners(port: int) -> set[int | None]:
    # The processes listening on the port; None for one this user may not see.
    return {
        connection.pid
        for connection in psutil.net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port
    }


def _descendants(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _tree(process: subprocess.Popen) -> set[int]:
    return {process.pid, *(child.pid for child in _descendants(process))}


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Return once ``process`` (or a process it started) listens on 127.0.0.1:port.

    Fail if it exits first, and with :class:`PortTaken` if another process has the
    port, rather than let the caller talk to whatever holds it.
    """

    def taken() -> bool:
        listeners = _listeners(port)
        return bool(listeners) and not listeners & _tree(process)

    def listening() -> bool:
        listeners = _listeners(port)
        if listeners & _tree(process):
            return True
        if listeners:
            raise PortTaken(f"127.0.0.1:{port} is another process's; start the server on another port")
        return False

    try:
        wait_while_running(listening, process, timeout, f"listening on 127.0.0.1:{port}")
    except RuntimeError as exc:
        if not isinstance(exc, PortTaken) and taken():
            raise PortTaken(f"127.0.0.1:{port} is another process's ({exc})") from exc
        raise


def on_a_free_port(start: Callable[[int], T], attempts: int = 3) -> T:
    """``start(port)`` on a port free at the time, again on another one if a process took it meanwhile."""
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def stop_process(process: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` s; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout)


@contextmanager
def stopped_if_start_up_fails(process: subprocess.Popen, timeout: float = 60) -> Iterator[None]:
    """Around a server's start-up: if it raises (a timeout, a taken port), the server and every process
    it started are stopped before the error goes on, so that no failed start leaves one running.

    The server gets SIGTERM first, as :func:`stop_process` sends it, to stop its own children in order;
    what is left of them then, in its process group or among its descendants, gets SIGKILL.
    """
    try:
        yield
    except BaseException:
        started = _descendants(process)
        stop_process(process, timeout)
        for child in started:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            # start_process made it the leader of a group of its own, which its children join unless they leave it.
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # Gone once this returns: a killed process is reaped a moment after its signal.
        psutil.wait_procs(started, timeout=timeout)
        raise
