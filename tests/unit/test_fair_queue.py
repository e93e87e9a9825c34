"""Queued jobs start round-robin between owners, each owner's in submission order."""

from science_gateway.fair_queue import FairQueue


def test_one_owners_burst_holds_back_anothers_job_by_one_job_at_most() -> None:
    queue = FairQueue()
    for index in range(50):
        queue.append(f"alice-{index}", "alice")
    queue.append("bob-0", "bob")

    order = [queue.popleft() for _ in range(len(queue))]

    assert order[:3] == ["alice-0", "bob-0", "alice-1"]
    assert [job for job in order if job.startswith("alice")] == [f"alice-{index}" for index in range(50)]


def test_owners_take_turns_in_the_order_they_first_queued() -> None:
    queue = FairQueue()
    for job_id, owner in [("a1", "alice"), ("a2", "alice"), ("b1", "bob"), ("c1", None), ("b2", "bob")]:
        queue.append(job_id, owner)
    assert [queue.popleft() for _ in range(5)] == ["a1", "b1", "c1", "a2", "b2"]
    assert len(queue) == 0 and not queue


def test_a_removed_job_leaves_its_owners_turn_when_it_was_the_last() -> None:
    queue = FairQueue()
    queue.append("a1", "alice")
    queue.append("b1", "bob")
    queue.append("a2", "alice")
    queue.remove("b1")
    queue.remove("a1")
    assert ("b1" in queue, "a2" in queue, queue.count("alice"), queue.count("bob")) == (False, True, 1, 0)
    assert queue.popleft() == "a2"
