"""What the gateway relies on in a store with conditional writes, shown on SeaweedFS through obstore (the gateway's client):
a create of a key wins once however many race for it, and a change names the version it replaces. And that rclone's
server has none of it: both creates of one key succeed there, which is what the gateway detects at its start."""

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import obstore
import obstore.exceptions
import psutil
import pytest
from obstore.store import S3Store

from conftest import BUCKET, SEAWEED_BUCKET
from devtools.local_s3 import LocalS3
from devtools.seaweed_s3 import SeaweedS3
from helpers import object_store, wait_for

# make soak races 20 rounds, as measured for the issue; make test 5 (a losing create may wait seconds for its 412).
ROUNDS = int(os.environ.get("SEAWEED_RACE_ROUNDS", "5"))
RACERS = 16


def create(store: S3Store, key: str, data: bytes) -> str:
    """What one create of ``key`` came to: ``"created"``, or the name of the exception it raised."""
    try:
        obstore.put(store, key, data, mode="create")
    except Exception as exc:  # noqa: BLE001 - each outcome is recorded and the test asserts them all
        return type(exc).__name__
    return "created"


def race(store: S3Store, key: str) -> list[tuple[str, bytes]]:
    """RACERS simultaneous creates of ``key``, each with its own data: each one's outcome and data."""
    start = threading.Barrier(RACERS)

    def one(index: int) -> tuple[str, bytes]:
        data = f"racer {index}".encode()
        start.wait(timeout=30)
        return create(store, key, data), data

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(one, range(RACERS)))


def test_of_simultaneous_creates_of_one_key_exactly_one_wins_each_round(seaweed: SeaweedS3) -> None:
    store = object_store(seaweed, SEAWEED_BUCKET)
    for round_ in range(ROUNDS):
        key = f"store-facts/race/{uuid.uuid4().hex}"
        outcomes = race(store, key)
        assert len(outcomes) == RACERS
        winners = [data for outcome, data in outcomes if outcome == "created"]
        assert len(winners) == 1, f"round {round_}: {sorted(outcome for outcome, _ in outcomes)}"
        assert sorted(outcome for outcome, _ in outcomes if outcome != "created") == ["AlreadyExistsError"] * (RACERS - 1)
        assert obstore.get(store, key).bytes().to_bytes() == winners[0], "the stored object is the winner's"


def test_a_change_names_the_version_it_replaces(seaweed: SeaweedS3) -> None:
    store = object_store(seaweed, SEAWEED_BUCKET)
    key = f"store-facts/versions/{uuid.uuid4().hex}"
    first = obstore.put(store, key, b"first", mode="create")
    second = obstore.put(store, key, b"second", mode={"e_tag": first["e_tag"]})
    assert second["e_tag"] and second["e_tag"] != first["e_tag"]

    with pytest.raises(obstore.exceptions.PreconditionError):
        obstore.put(store, key, b"stale", mode={"e_tag": first["e_tag"]})
    assert obstore.get(store, key).bytes().to_bytes() == b"second", "the stale change wrote nothing"

    third = obstore.put(store, key, b"third", mode={"e_tag": second["e_tag"]})
    assert third["e_tag"] not in (first["e_tag"], second["e_tag"])
    assert obstore.get(store, key).bytes().to_bytes() == b"third"


def test_rclones_server_has_no_conditional_writes(s3: LocalS3) -> None:
    store = object_store(s3, BUCKET)
    key = f"store-facts/no-conditions/{uuid.uuid4().hex}"
    assert [create(store, key, b"first"), create(store, key, b"second")] == ["created", "created"]
    assert obstore.get(store, key).bytes().to_bytes() == b"second", "the second create replaced the first"


def test_every_listener_of_seaweedfs_is_on_loopback_on_a_port_chosen_for_it(seaweed: SeaweedS3) -> None:
    def listeners() -> set[tuple[str, int]]:
        return {
            (connection.laddr.ip, connection.laddr.port)
            for connection in psutil.net_connections("tcp")
            if connection.pid == seaweed.process.pid and connection.status == psutil.CONN_LISTEN
        }

    chosen = {("127.0.0.1", port) for port in seaweed.ports.values()}
    assert len(chosen) == len(seaweed.ports) == 10
    # The admin server starts last, after the bucket takes objects.
    wait_for(lambda: chosen <= listeners(), 30, "every port chosen for seaweedfs to listen")
    assert listeners() == chosen
