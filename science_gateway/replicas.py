"""Replicas of the gateway on one results store: each holds a lease, and each sees which others hold theirs.

A replica's lease is an object, ``.replicas/<replica id>.json``, that it
rewrites every ``lease / RENEWALS_PER_LEASE`` seconds with a new count. Another
replica judges that lease by its own clock, never by a time written on another
machine: a lease whose object has not changed for ``lease`` seconds of the
observer's has lapsed, and its replica is dead (or stopped without removing
it). A replica that stops gracefully removes its object, and is gone at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from .job_records import now
from .results_store import ResultsStore

logger = logging.getLogger(__name__)

# Renewals in one lease's time: a lease lapses only after this many renewals in a row failed or never came.
RENEWALS_PER_LEASE = 6


@dataclass
class _Seen:
    version: str
    # When this observer first saw the lease at this version (its own monotonic clock).
    since: float


class Replicas:
    """This replica's lease, and what it has seen of the others'. Not thread-safe: one thread renews and observes."""

    def __init__(self, store: ResultsStore, replica_id: str, lease_seconds: float) -> None:
        self.id = replica_id
        self.lease_seconds = lease_seconds
        self._store = store
        self._renewals = 0
        self._started_at = now()
        self._seen: dict[str, _Seen] = {}
        # The view is renewed by one thread and read by requests (/readyz, submissions).
        self._lock = threading.Lock()
        # Replicas whose lease objects were removed since :meth:`take_departed` was last called: they stopped gracefully.
        self._departed: set[str] = set()
        # When each other replica says it started, as its lease says (for which of two holds a store only one may).
        self._started: dict[str, str] = {}
        # The observer's view is only as fresh as its last listing: a replica that could not list judges nobody.
        self._listed_at: float | None = None

    @property
    def renew_interval(self) -> float:
        return self.lease_seconds / RENEWALS_PER_LEASE

    def renew_and_observe(self) -> None:
        """Rewrite this replica's lease, then list every lease; :class:`StorageError` if the store fails."""
        self._renewals += 1
        content = {"replica": self.id, "renewal": self._renewals, "started_at": self._started_at}
        self._store.write_replica(self.id, json.dumps(content).encode())
        listed = self._store.replica_versions()
        with self._lock:
            changed = [replica for replica in listed if replica != self.id and replica not in self._started]
            self._observe(listed)
        for replica in changed:
            self._started[replica] = self._store.read_replica_start(replica)

    def take_departed(self) -> set[str]:
        """The replicas that removed their leases since the last call."""
        with self._lock:
            departed, self._departed = self._departed, set()
        return departed

    def older_alive(self) -> set[str]:
        """The other replicas alive that started before this one (by their leases; ties by id): one of them holds a store only one may."""
        mine = (self._started_at, self.id)
        return {replica for replica in self.others_alive() if (self._started.get(replica, ""), replica) < mine}

    def _observe(self, listed: dict[str, str]) -> None:
        moment = time.monotonic()
        if self._listed_at is not None and moment - self._listed_at > self.renew_interval * 2:
            # This observer could not look for a while: what it missed is no sign that another stopped renewing.
            self._seen = {replica: _Seen(seen.version, moment) for replica, seen in self._seen.items()}
        self._listed_at = moment
        for replica, version in listed.items():
            seen = self._seen.get(replica)
            if seen is None or seen.version != version:
                self._seen[replica] = _Seen(version, moment)
        departed = {replica for replica in set(self._seen) - set(listed) if replica != self.id}
        self._departed |= departed
        for replica in departed:
            del self._seen[replica]
            self._started.pop(replica, None)

    def others_alive(self) -> set[str]:
        """The other replicas whose leases this one has seen renewed within a lease's time."""
        moment = time.monotonic()
        with self._lock:
            return {replica for replica, seen in self._seen.items() if replica != self.id and moment - seen.since < self.lease_seconds}

    def is_alive(self, replica: str | None) -> bool:
        """Whether ``replica`` holds its lease (this one always does); None, a job no replica holds, is no replica."""
        return replica == self.id or replica in self.others_alive()

    def lapsed(self) -> set[str]:
        """The other replicas whose lease objects are there, unrenewed for a lease's time."""
        with self._lock:
            seen = {replica for replica in self._seen if replica != self.id}
        return seen - self.others_alive()

    def forget(self, replica: str) -> None:
        """Remove a lapsed lease once its replica's jobs are taken over."""
        self._store.delete_replica(replica)
        with self._lock:
            self._seen.pop(replica, None)
        logger.info("the lease of replica %s lapsed; its jobs are taken over and it is forgotten", replica)

    def release(self) -> None:
        """Remove this replica's lease at the end of a graceful stop: the others know at once that it is gone."""
        self._store.delete_replica(self.id)
