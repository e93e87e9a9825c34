"""The waiting room's places (all callers', and each owner's share) and the watch that frees a place when its caller hangs up.

Real threads and real sockets: a socket pair stands for a caller's connection.
"""

import socket
import threading

import pytest

from helpers import wait_for
from science_gateway.admission import AdmissionRefused, Places
from science_gateway.hang_ups import HangUpWatch


def test_each_owner_has_a_share_and_all_together_the_total() -> None:
    room = Places("waiting_callers", total=3, per_owner=2)
    with room.place("alice", "wait"), room.place("alice", "wait"):
        with pytest.raises(AdmissionRefused) as alices_third:
            with room.place("alice", "poll instead"):
                pass
        with room.place("bob", "wait"):
            assert room.taken == 3
            with pytest.raises(AdmissionRefused) as carols:
                with room.place("carol", "poll instead"):
                    pass
    assert room.taken == 0
    assert (alices_third.value.code, alices_third.value.setting, alices_third.value.limit) == (
        "too_many_waiting_callers_of_owner", "GATEWAY_MAX_WAITING_CALLERS_PER_OWNER", 2,
    )  # fmt: skip
    assert str(alices_third.value) == "alice has 2 waiting callers already: the limit is 2 (GATEWAY_MAX_WAITING_CALLERS_PER_OWNER); poll instead"
    assert (carols.value.code, carols.value.setting) == ("too_many_waiting_callers", "GATEWAY_MAX_WAITING_CALLERS")
    assert carols.value.headers() == {"Retry-After": "10"}


def test_callers_without_an_owner_count_against_the_total_alone() -> None:
    room = Places("waiting_callers", total=3, per_owner=1)
    with room.place(None, "wait"), room.place(None, "wait"), room.place(None, "wait"):
        with pytest.raises(AdmissionRefused, match="GATEWAY_MAX_WAITING_CALLERS\\)"):
            with room.place(None, "wait"):
                pass


def test_a_place_comes_free_when_its_holder_fails() -> None:
    room = Places("waiting_callers", total=1, per_owner=1)
    with pytest.raises(RuntimeError):
        with room.place("alice", "wait"):
            raise RuntimeError("the job failed")
    with room.place("alice", "wait"):
        assert room.taken == 1


def test_a_read_beyond_its_owners_share_waits_for_a_place_and_is_refused_when_none_comes() -> None:
    reads = Places("reads", total=4, per_owner=1, patience=30)
    holding, release, second_in = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def first() -> None:
        with reads.place("alice", "read fewer"):
            holding.set()
            release.wait(30)

    def second() -> None:
        try:
            with reads.place("alice", "read fewer"):
                second_in.set()
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's own thread to fail on
            failures.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert holding.wait(30)
    threads[1].start()
    wait_for(lambda: reads.waiting == 1, 30, "alice's second read to wait for a place")
    with reads.place("bob", "read fewer"):
        assert not second_in.is_set() and reads.waiting == 1, "alice's second read waits while bob's goes in"
    release.set()
    for thread in threads:
        thread.join(30)
    assert second_in.is_set() and not failures

    impatient = Places("reads", total=4, per_owner=1, patience=0.05)
    with impatient.place("alice", "read fewer"):
        with pytest.raises(AdmissionRefused) as refused:
            with impatient.place("alice", "read fewer", retry_after=1):
                pass
    assert (refused.value.code, refused.value.setting, refused.value.headers()) == (
        "too_many_reads_of_owner", "GATEWAY_MAX_READS_PER_OWNER", {"Retry-After": "1"},
    )  # fmt: skip


def test_a_caller_who_hangs_up_is_woken_and_marked_gone() -> None:
    watch = HangUpWatch()
    caller, gateway_side = socket.socketpair()
    with gateway_side, watch.watching(gateway_side) as waiter:
        caller.close()
        assert waiter.wake.wait(30), "woken when the caller hangs up"
        assert waiter.gone


def test_a_caller_still_connected_is_left_as_it_was() -> None:
    watch = HangUpWatch()
    caller, gateway_side = socket.socketpair()
    with caller, gateway_side:
        with watch.watching(gateway_side) as waiter:
            pass
        assert not waiter.gone and not waiter.wake.is_set()
        caller.sendall(b"the next request")
        assert gateway_side.recv(100) == b"the next request", "nothing was read from the connection"
        # Watched again after its first watch ended, as a keep-alive connection's next waiting request is.
        with watch.watching(gateway_side) as again:
            caller.shutdown(socket.SHUT_WR)
            assert again.wake.wait(30) and again.gone


def test_a_waiter_without_a_connection_is_never_gone() -> None:
    with HangUpWatch().watching(None) as waiter:
        assert not waiter.gone


def test_no_more_requests_wait_for_a_place_than_the_total_and_the_rest_are_refused_at_once() -> None:
    """Each waiting request holds a request thread: their number is bounded too."""
    reads = Places("reads", total=1, per_owner=None, patience=30)
    waited = threading.Event()
    failures: list[BaseException] = []

    def wait_for_a_place() -> None:
        try:
            with reads.place(None, "read fewer"):
                waited.set()
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's own thread to fail on
            failures.append(exc)

    with reads.place(None, "read fewer"):
        waiter = threading.Thread(target=wait_for_a_place)
        waiter.start()
        wait_for(lambda: reads.waiting == 1, 30, "one read to wait")
        with pytest.raises(AdmissionRefused, match="GATEWAY_MAX_READS\\)"):
            with reads.place(None, "read fewer"):
                pass
    waiter.join(30)
    assert waited.is_set() and not failures and not waiter.is_alive()
