"""The job lifecycle: submit, queue, run, watch, cancel, delete, expire; records that outlive the process.

A job is named by its owner and the id they gave it (:class:`JobKey`): each
owner's ids are their own. It is ``queued``, then ``running``, then ``done``,
``failed`` or ``cancelled``. Its record is written to the results store at every change of status, so that a
new gateway process lists every job: what was running when the old process
died is marked ``failed`` (the work stopped with it), what was queued runs.
Progress (chunks written) is kept in memory while the job runs. Submitting an
id again with the same parameters is the same job, not a new one.

:class:`JobManager` is the front: submissions and their admission, queries
and waits, start and stop. The jobs in memory are a :class:`JobTable`; the
runners (:mod:`job_runner`), deletions and expiry (:mod:`job_deletion`) and
the stored records (:mod:`record_keeping`) work on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Generator
from dataclasses import replace
from typing import Any

from .admission import AdmissionRefused
from .apps.base import Limits
from .apps.registry import Apps
from .cluster import ClusterConnection
from .hang_ups import Waiter
from .job_deletion import JobDeletion
from .job_errors import INTERRUPTED, GatewayStopping, JobAlreadyExists, JobInterrupted, JobNotFound, JobStillStopping, ReplicaStandby
from .job_events import JobEvent, follow
from .job_parameters import differences, new_job_id, validate_job_id
from .job_records import FINISHED, QUEUED, RESUBMITTABLE, RUNNING, JobKey, JobRecord, decode_cursor, encode_cursor, sort_key
from .job_runner import JobRunner
from .job_table import JobTable
from .job_work import JobWork, SourceGone, SourceResult
from .metrics import GatewayMetrics, job_event_fields
from .record_keeping import RecordKeeper
from .record_sync import RecordSync
from .replicas import Replicas
from .results_store import RecordChanged, ResultsStore, StorageError, place_for
from .settings import Settings

logger = logging.getLogger(__name__)

# A caller at their records' cap must delete jobs first: trying again soon would only be refused again.
RECORDS_RETRY_AFTER_SECONDS = 300

# Saves of a new job's record, each after another replica changed it first, before the submission gives up.
SAVE_ATTEMPTS = 3

# The job errors are raised here, and their callers name them from this module.
__all__ = ["INTERRUPTED", "GatewayStopping", "JobAlreadyExists", "JobInterrupted", "JobManager", "JobNotFound"]


class JobManager:
    """Owns every job of one gateway process and runs them on its cluster."""

    def __init__(self, cluster: ClusterConnection, store: ResultsStore, settings: Settings, metrics: GatewayMetrics, apps: Apps) -> None:
        self._cluster = cluster
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._table = table = JobTable()
        self._keeper = keeper = RecordKeeper(table, store, metrics, apps, settings.replica_id)
        self._runner = JobRunner(table, cluster, store, settings, metrics, apps, keeper)
        self._deletion = JobDeletion(table, store, settings, metrics, keeper)
        self._replicas = Replicas(store, settings.replica_id, settings.replica_lease_seconds)
        self._sync = RecordSync(table, keeper, self._replicas, store, metrics)
        self._sync_stopping = threading.Event()
        # Why this replica serves no job yet, while another holds a store without conditional writes.
        self._standby: str | None = None
        self._interrupter: threading.Thread | None = None
        self._loaded = threading.Event()
        self._load_error = "job records not read yet"
        self._load_failed = False
        self._threads: list[threading.Thread] = []

    # -- start and stop ---------------------------------------------------

    def start(self) -> None:
        """Read the stored records, then start the runners; returns at once."""
        loader = threading.Thread(target=self._load_then_run, name="job-records", daemon=True)
        loader.start()
        self._threads.append(loader)

    def count(self, status: str) -> int:
        with self._table.lock:
            return sum(record.status == status for record in self._table.records.values())

    def readiness(self) -> tuple[bool, str]:
        if self._standby is not None:
            return False, self._standby
        return (True, "") if self._loaded.is_set() else (False, self._load_error)

    def replication(self) -> dict[str, Any]:
        """This replica, whether the store lets replicas share it, and the other replicas seen alive."""
        others = sorted(self._replicas.others_alive())
        intruders = sorted(self._sync.intruders)
        reason = f"replicas {', '.join(intruders)} also run on this store without conditional writes; run one replica" if intruders else ""
        return {"ready": not intruders, "reason": reason, "replica": self._replicas.id, "shared": self._keeper.shared, "others": others}

    def stop_starting_jobs(self) -> None:
        """Begin a graceful stop: no new job and no queued job starts; running jobs go on.

        Called when SIGTERM arrives, so that the time running jobs get to
        finish (``GATEWAY_SHUTDOWN_TIMEOUT``) counts from then. Queued jobs stay
        queued in their records, and the next gateway process runs them. Jobs
        still running at the deadline are cancelled then, even while a caller
        waits for one and so keeps gunicorn from exiting.
        """
        table = self._table
        with table.lock:
            if table.drain_deadline is not None:
                return
            table.drain_deadline = deadline = time.monotonic() + self._settings.shutdown_timeout
            logger.info("stopping: %d running jobs get %g s to finish", len(table.running), self._settings.shutdown_timeout)
            # Callers waiting for a queued job learn that it starts in the next process.
            table.changed(*table.waiters)
            queued = [record for record in table.records.values() if record.key in table.queue] if self._keeper.shared else []
        if queued:
            handing_over = threading.Thread(target=self._hand_over, args=(queued,), name="job-hand-over", daemon=True)
            handing_over.start()
            self._threads.append(handing_over)
        self._interrupter = threading.Thread(
            target=self._interrupt_at_deadline, args=(deadline,), name="job-interrupter", daemon=True
        )
        self._interrupter.start()

    def close(self) -> None:
        """Let running jobs finish until the shutdown timeout; those still running are recorded as interrupted."""
        self.stop_starting_jobs()
        if self._interrupter is not None:
            self._interrupter.join()
        for thread in self._threads:
            thread.join(timeout=30)
        self._sync_stopping.set()
        try:
            self._replicas.release()
        except StorageError as exc:
            logger.error("the lease of this replica could not be removed; the others take over once it lapses: %s", exc)

    def _hand_over(self, queued: list[JobRecord]) -> None:
        """Give up the queued jobs of a replica that is stopping: saved as held by none, another replica takes them over at once."""
        for record in queued:
            with self._table.lock:
                if self._table.records.get(record.key) is not record or record.key not in self._table.queue or record.key in self._table.reserved:
                    continue
                self._table.queue.remove(record.key)
                self._table.reserved.add(record.key)
            try:
                standing = self._keeper.save_final(replace(record, replica=None))
            except StorageError:
                # Still this replica's: taken over once its lease is gone.
                standing = record
            finally:
                with self._table.lock:
                    self._table.reserved.discard(record.key)
            with self._table.lock:
                self._keeper.settle(record.key, standing)
        logger.info("stopping: %d queued jobs handed over to the other replicas", len(queued))

    def _take_the_store(self) -> None:
        """Hold a lease, learn whether replicas can share the store, and on one they cannot, wait while another holds it."""
        replicas = self._replicas
        replicas.renew_and_observe()
        self._keeper.shared = self._store.has_conditional_writes()
        while not self._keeper.shared and (others := replicas.older_alive()) and not self._table.stop_requested.is_set():
            if self._standby is None:
                logger.warning("replica %s holds this results store, which has no conditional writes: this one waits until it stops", ", ".join(sorted(others)))
            self._standby = (
                f"replica {', '.join(sorted(others))} holds this results store, which has no conditional writes: "
                "this replica takes over once it stops (run one replica on such a store)"
            )
            self._table.stop_requested.wait(replicas.renew_interval)
            replicas.renew_and_observe()
        if not self._keeper.shared:
            for replica in replicas.lapsed():
                replicas.forget(replica)
        self._standby = None
        sharing = "is shared through conditional writes" if self._keeper.shared else "has no conditional writes: one replica"
        logger.info("replica %s: the results store %s", replicas.id, sharing)

    def _interrupt_at_deadline(self, deadline: float) -> None:
        table = self._table
        with table.lock:
            table.lock.wait_for(lambda: not table.running, timeout=max(0.0, deadline - time.monotonic()))
            table.stop_requested.set()
            running = list(table.running.items())
            table.changed()
        for key, writes in running:
            logger.warning("job %s interrupted: the gateway is stopping", key)
            # A job whose tasks are not sent yet sees the stop before it sends them.
            if writes is not None:
                writes.cancel()

    def _load_then_run(self) -> None:
        table = self._table
        delay = 1.0
        while not table.stop_requested.is_set():
            try:
                self._take_the_store()
                self._keeper.load()
                self._loaded.set()
                break
            except Exception as exc:
                self._load_failed = True
                if isinstance(exc, StorageError):
                    self._metrics.s3_errors.inc()
                    logger.error("job records could not be read: %s", exc)
                else:
                    logger.exception("job records could not be read")
                self._load_error = f"job records could not be read ({exc}); retrying in {delay:.0f} s"
                table.stop_requested.wait(delay)
                delay = min(delay * 2, 60.0)
        for index in range(self._settings.max_running_jobs):
            runner = threading.Thread(target=self._runner.run_queued_jobs, name=f"job-runner-{index}", daemon=True)
            runner.start()
            self._threads.append(runner)
        sweeper = threading.Thread(target=self._deletion.expire_results, name="job-expiry", daemon=True)
        sweeper.start()
        self._threads.append(sweeper)
        # Not joined with the runners: jobs that run until the end of a graceful stop must still see cancellations made elsewhere.
        threading.Thread(target=self._sync.keep_in_view, args=(self._sync_stopping,), name="replicas", daemon=True).start()

    # -- the API ----------------------------------------------------------

    def _require_loaded(self) -> None:
        if self._standby is not None:
            raise ReplicaStandby(self._standby)
        # Right after start-up the records are still being read; once a read has failed, say so at once.
        if not self._loaded.wait(0 if self._load_failed else 10):
            raise StorageError(self._load_error, dependency="job_records")

    @property
    def limits(self) -> Limits:
        """The settings an app's plan keeps to."""
        settings = self._settings
        return Limits(settings.max_elements, settings.max_chunks, settings.max_chunk_bytes, settings.default_shards, settings.zarr_format)

    def source(self, owner: str | None, job_id: str) -> SourceResult | str | None:
        """``owner``'s done job ``job_id`` as a source; the status of one that is not done; None when there is none."""
        self._require_loaded()
        with self._table.lock:
            return self._table.source(JobKey(owner, job_id))

    def submit(
        self, job_id: str | None, work: JobWork, owner: str | None = None, ttl: int | None = None, left_to_gateway: Collection[str] = ()
    ) -> tuple[JobRecord, bool]:
        """The record of ``owner``'s job of this id and this work, and whether it is new.

        A new id, or one whose job failed or was cancelled, queues a new job. An
        id whose job is queued, running or done is that job when the app and
        parameters are its own (those in ``left_to_gateway``, such as a seed the
        gateway draws, match any value), and :class:`JobAlreadyExists` naming
        each parameter that differs otherwise. The work's sources must still be
        the done runs it was planned with (:class:`SourceGone` otherwise).
        """
        table = self._table
        began = time.perf_counter()
        job_id = validate_job_id(job_id) if job_id is not None else new_job_id()
        self._require_loaded()
        key = JobKey(owner, job_id)
        place = place_for(job_id, owner)
        url = self._store.url_for(place)
        sources = [JobKey(owner, run.job_id) for run in work.sources.values()]
        with table.lock:
            # A submission or deletion of this job, or of a source, under way decides what this one finds.
            table.lock.wait_for(lambda: key not in table.reserved and not any(source in table.reserved for source in sources))
            if (repeated := self._repeated(key, work, ttl, left_to_gateway)) is not None:
                return repeated, False
            if table.drain_deadline is not None:
                raise GatewayStopping("the gateway is stopping and takes no new jobs; submit the job again in a minute")
            for run in work.sources.values():
                found = table.source(JobKey(owner, run.job_id))
                if not isinstance(found, SourceResult) or found.finished_at != run.finished_at:
                    raise SourceGone(f"source {run.job_id!r} was deleted or made again while the job was submitted; submit it again")
            previous = table.records.get(key)
            stopping_at = previous.replica if previous is not None and previous.status in FINISHED else None
            if stopping_at not in (None, self._keeper.replica) and self._replicas.is_alive(stopping_at):
                # Its last run, cancelled here, still stops at its replica: a new run must not meet its writes.
                raise JobStillStopping(f"job {job_id!r} was cancelled and is still stopping at replica {stopping_at}; submit it again in a few seconds")
            self._admit(owner, work, new_record=previous is None)
            # Reserved until its record is saved: a concurrent submission of this job waits for it.
            table.reserved.add(key)
            table.submitting[key] = work
        try:
            # On a shared store a previous run's result is removed by the run that wins the claim (job_runner):
            # removed here, it could be another replica's new run, saved first.
            if previous is not None and not self._keeper.shared:
                self._store.delete(previous.place)
            if previous is None and self._store.exists(place):
                # On a shared store, what is there may be the run of this job that another replica submitted meanwhile.
                if self._keeper.shared and (repeated := self._submitted_elsewhere(key, work, ttl, left_to_gateway)) is not None:
                    return repeated, False
                raise JobAlreadyExists(job_id, url)
            record = JobRecord(job_id, work, url, owner=owner, place=place, ttl=ttl, replica=self._keeper.replica)
            admitted = time.perf_counter()
            for _attempt in range(SAVE_ATTEMPTS):
                try:
                    self._keeper.save(record)
                    break
                except RecordChanged:
                    # Another replica saved this id first: its job decides, as if it had been submitted here;
                    # one that has ended since (failed, cancelled, deleted) is replaced as here.
                    if (repeated := self._submitted_elsewhere(key, work, ttl, left_to_gateway)) is not None:
                        return repeated, False
            else:
                raise StorageError(f"the record of job {job_id!r} changed {SAVE_ATTEMPTS} times while it was saved; submit it again")
            with table.lock:
                table.records[key] = record
                table.queue.append(key, owner)
                queued = replace(record)
        finally:
            with table.lock:
                table.reserved.discard(key)
                del table.submitting[key]
                table.changed(key)
        self._metrics.jobs_submitted.labels(work.app).inc()
        self._metrics.job_phases.labels("admission").observe(admitted - began)
        self._metrics.job_phases.labels("records").observe(time.perf_counter() - admitted)
        logger.info("job %s submitted: %s %s", key, work.app, work.parameters, extra=job_event_fields(job_id, "submitted", QUEUED))
        return queued, True

    def repeat_of(
        self, job_id: str, work: JobWork, owner: str | None, ttl: int | None, left_to_gateway: Collection[str] = ()
    ) -> JobRecord | None:
        """``owner``'s job of this id if a submission of this work would return it (it is queued, running
        or done with it), as :meth:`submit` decides; None if it would queue a new job."""
        table = self._table
        self._require_loaded()
        key = JobKey(owner, validate_job_id(job_id))
        with table.lock:
            table.lock.wait_for(lambda: key not in table.reserved)
            return self._repeated(key, work, ttl, left_to_gateway)

    def _submitted_elsewhere(self, key: JobKey, work: JobWork, ttl: int | None, left_to_gateway: Collection[str]) -> JobRecord | None:
        """The job another replica saved under this id, read now, if this submission repeats it; :class:`JobAlreadyExists` if it differs."""
        standing = self._keeper.read(key)
        with self._table.lock:
            self._keeper.settle(key, standing)
            return self._repeated(key, work, ttl, left_to_gateway)

    def _repeated(self, key: JobKey, work: JobWork, ttl: int | None, left_to_gateway: Collection[str]) -> JobRecord | None:
        """The job a submission of this work repeats, or None; :class:`JobAlreadyExists` for other parameters. Lock held."""
        table = self._table
        previous = table.records.get(key)
        if previous is None or previous.status in RESUBMITTABLE:
            return None
        differing = differences(previous.work.compared(previous.ttl), work.compared(ttl), left_to_gateway)
        if differing:
            raise JobAlreadyExists(key.job_id, previous.url, differing)
        return replace(previous)

    def _admit(self, owner: str | None, work: JobWork, new_record: bool) -> None:
        """:class:`AdmissionRefused` if a job of ``owner`` would be over a limit on queued jobs, records or stored bytes; called with the lock held.

        ``new_record``: the job takes a record of its own, where a resubmission replaces its failed or cancelled run's.
        """
        table = self._table
        settings = self._settings
        nbytes = work.output.nbytes
        # Submissions under way count as queued: a burst of them must not pass a limit together.
        submitting = [pending for key, pending in table.submitting.items() if key.owner == owner]
        if settings.owner_quota_bytes is not None:
            used = table.usage(owner)[0] + sum(pending.output.nbytes for pending in submitting)
            if used + nbytes > settings.owner_quota_bytes:
                raise AdmissionRefused(
                    "quota_exceeded", f"{owner or 'this gateway'} has {used} bytes of results done, queued or running, "
                    f"and this job adds {nbytes}", settings.owner_quota_bytes, "GATEWAY_OWNER_QUOTA_BYTES",
                    "delete finished jobs (DELETE /jobs/<id>) or submit a smaller one", usage=used,
                )  # fmt: skip
        queued = len(table.queue) + len(table.submitting)
        if queued >= settings.max_queued_jobs:
            raise AdmissionRefused(
                "too_many_queued_jobs", f"{queued} jobs are queued", settings.max_queued_jobs,
                "GATEWAY_MAX_QUEUED_JOBS", "submit it again once some have started",
            )  # fmt: skip
        # Without authentication every caller is one owner: the queue's limit is the only one.
        if owner is None:
            return
        records = len(table.records.of_owner(owner)) + sum(key not in table.records for key in table.submitting if key.owner == owner)
        if new_record and records >= settings.max_records_per_owner:
            raise AdmissionRefused(
                "too_many_records_of_owner", f"{owner} has {records} jobs of every status",
                settings.max_records_per_owner, "GATEWAY_MAX_RECORDS_PER_OWNER",
                "delete finished jobs (DELETE /jobs/<id>) or submit again under the id of a failed or cancelled one",
                retry_after=RECORDS_RETRY_AFTER_SECONDS,
            )  # fmt: skip
        # From the records, not this replica's queue: jobs queued or running at other replicas count once it has read them.
        held = sum(record.status in (QUEUED, RUNNING) for record in table.records.of_owner(owner)) + len(submitting)
        if held >= settings.max_jobs_per_owner:
            raise AdmissionRefused(
                "too_many_jobs_of_owner", f"{owner} has {held} jobs queued or running",
                settings.max_jobs_per_owner, "GATEWAY_MAX_JOBS_PER_OWNER", "submit it again once one of them has finished",
            )  # fmt: skip

    def usage(self, owner: str | None) -> tuple[int, int]:
        """Bytes of ``owner``'s done, queued and running jobs, and how many jobs they are."""
        table = self._table
        self._require_loaded()
        with table.lock:
            return table.usage(owner)

    def stored_bytes(self) -> int:
        """Bytes of every done, queued and running job's result."""
        with self._table.lock:
            return sum(record.work.output.nbytes for record in self._table.taking_space())

    def get(self, key: JobKey) -> JobRecord:
        """The job's record; :class:`JobNotFound` if there is none."""
        table = self._table
        self._require_loaded()
        self._look_up(key)
        with table.lock:
            return replace(table.record(key))

    def _look_up(self, key: JobKey) -> None:
        """On a shared store, the job's record as stored now when another replica may have changed it since this one
        last read it: a job it does not know (submitted elsewhere a moment ago), or one another replica runs."""
        table = self._table
        if not self._keeper.shared:
            return
        with table.lock:
            record = table.records.get(key)
            if key in table.reserved or (record is not None and (record.status in FINISHED or self._keeper.holds(record))):
                return
        standing = self._keeper.read(key)
        with table.lock:
            if key not in table.reserved and key not in table.running:
                self._keeper.settle(key, standing)

    @property
    def stopping(self) -> bool:
        return self._table.drain_deadline is not None

    def wait(self, key: JobKey, timeout: float | None = None, waiter: Waiter | None = None) -> JobRecord:
        """Block until the job is finished, will not start before the gateway stops, ``timeout`` s have passed or the waiter hangs up; its record.

        The waiter is woken at each change of this job's record only (its status,
        and its progress as each task's chunks land), so that a room of waiting
        callers costs no more than its jobs' changes.
        """
        table = self._table
        waiter = waiter or Waiter()
        deadline = None if timeout is None else time.monotonic() + timeout

        def over() -> bool:
            record = table.records.get(key)
            if record is None or record.status in FINISHED:
                return True
            return record.status == QUEUED and table.drain_deadline is not None

        with table.waiting(key, waiter):
            while True:
                waiter.wake.clear()
                with table.lock:
                    if over():
                        break
                remaining = None if deadline is None else deadline - time.monotonic()
                if waiter.gone or (remaining is not None and remaining <= 0):
                    break
                waiter.wake.wait(remaining)
        with table.lock:
            if key not in table.records:
                raise JobNotFound(f"job {key.job_id!r} was deleted")
            return replace(table.records[key])

    def follow(self, key: JobKey, last_id: int | None, waiter: Waiter) -> Generator[JobEvent | None] | None:
        """The job's events after ``last_id`` as they happen (:func:`job_events.follow`); None once the caller has its final one.

        :class:`JobNotFound` if there is no such job.
        """
        table = self._table
        self._require_loaded()
        self._look_up(key)
        with table.lock:
            record = table.record(key)
            if record.status in FINISHED and not table.events.after(key, record, last_id):
                return None
        return follow(table, key, last_id, waiter)

    def list(
        self, status: str | None, limit: int, cursor: str | None, visible_to: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first, only ``visible_to``'s when given; the cursor, when not None, fetches the next page."""
        table = self._table
        self._require_loaded()
        after = decode_cursor(cursor) if cursor else None
        with table.lock:
            # Copied under the lock, sorted without it: the lock is every request's and every runner's.
            records = list(table.records.values() if visible_to is None else table.records.of_owner(visible_to))
        records.sort(key=sort_key, reverse=True)
        if status is not None:
            records = [record for record in records if record.status == status]
        if after is not None:
            records = [record for record in records if sort_key(record) < after]
        page = [replace(record) for record in records[:limit]]
        return page, (encode_cursor(page[-1]) if len(records) > limit else None)

    def cancel_or_delete(self, key: JobKey) -> JobRecord | None:
        """Cancel a queued or running job and return its record; delete a finished one and return None.

        As :meth:`JobDeletion.cancel_or_delete`: a running job ends cancelled, never done;
        a cancellation the store refuses is undone (:class:`StorageError`).
        """
        self._require_loaded()
        self._look_up(key)
        return self._deletion.cancel_or_delete(key)

    def cancel(self, key: JobKey) -> JobRecord:
        """Cancel a queued or running job, as :meth:`cancel_or_delete` does; a finished job's record, untouched.

        What a client that means to stop a job asks for: a job that finished meanwhile keeps its result.
        """
        self._require_loaded()
        self._look_up(key)
        record = self._deletion.cancel_or_delete(key, delete_finished=False)
        assert record is not None  # a finished job is returned, never deleted
        return record
