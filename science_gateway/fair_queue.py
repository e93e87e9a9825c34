"""Queued jobs, started round-robin between their owners.

A workshop submits in bursts: one user's fifty jobs must not hold back the
next user's one. Each owner's jobs keep their submission order; owners take
turns, so a job waits for at most one job of each other owner ahead of it in
the rotation, however many each has queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

Job = TypeVar("Job", bound=Hashable)


class FairQueue(Generic[Job]):
    """Jobs by owner (None for a gateway without authentication), taken one owner at a time in turn."""

    def __init__(self) -> None:
        self._by_owner: dict[str | None, deque[Job]] = {}
        # Owners with queued jobs, the next to start first.
        self._turns: deque[str | None] = deque()
        self._owner_of: dict[Job, str | None] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._owner_of

    def append(self, job_id: Job, owner: str | None) -> None:
        if owner not in self._by_owner:
            self._by_owner[owner] = deque()
            self._turns.append(owner)
        self._by_owner[owner].append(job_id)
        self._owner_of[job_id] = owner

    def popleft(self) -> Job:
        """The next job to start: the oldest of the owner whose turn it is."""
        owner = self._turns.popleft()
        jobs = self._by_owner[owner]
        job_id = jobs.popleft()
        if jobs:
            self._turns.append(owner)
        else:
            del self._by_owner[owner]
        del self._owner_of[job_id]
        return job_id

    def remove(self, job_id: Job) -> None:
        owner = self._owner_of.pop(job_id)
        jobs = self._by_owner[owner]
        jobs.remove(job_id)
        if not jobs:
            del self._by_owner[owner]
            self._turns.remove(owner)

    def clear(self) -> None:
        self._by_owner.clear()
        self._turns.clear()
        self._owner_of.clear()

    def count(self, owner: str | None) -> int:
        """How many jobs of ``owner`` are queued."""
        return len(self._by_owner.get(owner, ()))
