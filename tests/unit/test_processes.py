"""The tests' servers start on ports that are theirs: a port taken between choosing and binding is noticed."""

import socket
import sys

import pytest

from devtools.processes import PortTaken, free_port, on_a_free_port, start_process, stop_process, wait_for_port


def test_a_server_whose_port_another_process_holds_is_refused_not_trusted() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = start_process([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
        try:
            with pytest.raises(PortTaken, match=f"127.0.0.1:{port} is another process's"):
                wait_for_port(port, server, timeout=30)
        finally:
            stop_process(server)


def test_a_server_on_its_own_port_is_waited_for() -> None:
    port = free_port()
    server = start_process([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
    try:
        wait_for_port(port, server, timeout=30)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        stop_process(server)


def test_a_taken_port_is_tried_again_on_another() -> None:
    tried: list[int] = []

    def start(port: int) -> int:
        tried.append(port)
        if len(tried) == 1:
            raise PortTaken("taken meanwhile")
        return port

    assert on_a_free_port(start) == tried[1]
    assert len(tried) == 2


def test_a_port_taken_at_every_attempt_is_reported() -> None:
    def always_taken(port: int) -> None:
        raise PortTaken(f"{port} taken")

    with pytest.raises(PortTaken):
        on_a_free_port(always_taken, attempts=2)
