"""The job lifecycle: submit, queue, run, watch, cancel, delete, expire; records that outlive the process.

A job is named by its owner and the id they gave it (:class:`JobKey`): each
owner's ids are their own. It is ``queued``, then ``running``, then ``done``,
``failed`` or ``cancelled``. Its record is written to the results store at every change of status, so that a
new gateway process lists every job: what was running when the old process
died is marked ``failed`` (the work stopped with it), what was queued runs.
Progress (chunks written) is kept in memory while the job runs. Submitting an
id again with the same parameters is the same job, not a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from .admission import RETRY_AFTER_SECONDS, AdmissionRefused
from .apps.base import Limits
from .apps.registry import Apps
from .chunk_writes import ChunkWrites, JobCancelled, JobFailed
from .cluster import ClusterConnection
from .errors import GatewayError
from .fair_queue import FairQueue
from .hang_ups import Waiter
from .job_parameters import differences, new_job_id, validate_job_id
from .job_records import (
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    QUEUED,
    RESUBMITTABLE,
    RUNNING,
    TAKING_SPACE,
    JobKey,
    JobRecord,
    decode_cursor,
    encode_cursor,
    finish,
    has_expired,
    now,
    sort_key,
    trusted_records,
)
from .job_work import JobWork, SourceGone, SourceResult, runnable
from .metrics import GatewayMetrics, job_event_fields
from .results_store import ResultsStore, StorageError, place_for
from .settings import Settings

logger = logging.getLogger(__name__)


class JobAlreadyExists(GatewayError, RuntimeError):
    """The caller's id names a job with other parameters, or a result is stored there without a job."""

    status, code = 409, "job_exists"

    def __init__(self, job_id: str, url: str, differing: dict[str, dict[str, Any]] | None = None) -> None:
        if differing:
            said = "; ".join(f"{name} is {values['existing']!r}, not {values['requested']!r}" for name, values in differing.items())
            what = f"job {job_id!r} exists with other parameters ({said}); submit it with its own parameters to get it, or choose another id"
        else:
            what = f"a result is stored at {url} without a job; results are never overwritten, choose another id"
        super().__init__(what)
        self.url = url
        self.differing = differing or {}

    def details(self) -> dict[str, Any]:
        return {"url": self.url} | ({"differences": self.differing} if self.differing else {})


class JobNotFound(GatewayError, LookupError):
    """The caller has no job of this id (another owner's job is not found either)."""

    status, code = 404, "job_not_found"


class JobInterrupted(GatewayError, RuntimeError):
    """The gateway stopped while the job ran; it may be submitted again."""

    status, code = 503, "interrupted"


INTERRUPTED = {"code": JobInterrupted.code, "message": "the gateway stopped while this job was running; submit it again"}


class GatewayStopping(GatewayError, RuntimeError):
    """The gateway is shutting down and starts no more jobs."""

    status, code = 503, "gateway_stopping"

    def headers(self) -> dict[str, str]:
        # The next pod takes submissions within about this long.
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}


class JobManager:
    """Owns every job of one gateway process and runs them on its cluster."""

    def __init__(self, cluster: ClusterConnection, store: ResultsStore, settings: Settings, metrics: GatewayMetrics, apps: Apps) -> None:
        self._cluster = cluster
        self._apps = apps
        self._store = store
        self._settings = settings
        self._metrics = metrics
        # One condition guards all in-memory state and is notified at every change.
        self._lock = threading.Condition()
        self._records: dict[JobKey, JobRecord] = {}
        self._queue: FairQueue[JobKey] = FairQueue()
        # Jobs being submitted or deleted: reserved, so that the two never interleave on one job.
        self._reserved: set[JobKey] = set()
        # The jobs being submitted, not yet queued: the limits count them as queued.
        self._submitting: dict[JobKey, JobWork] = {}
        # Every job a runner has taken; its tasks once they are sent to the cluster.
        self._running: dict[JobKey, ChunkWrites | None] = {}
        # Running jobs to stop, and the error each then ends with (None: cancelled by its owner).
        self._cancel_requested: dict[JobKey, dict[str, str] | None] = {}
        # Callers waiting for each job, woken at each change of its status.
        self._waiters: dict[JobKey, set[Waiter]] = {}
        # Cancelling and deleting touch the store; one at a time keeps it consistent.
        self._delete_lock = threading.Lock()
        self._stop_requested = threading.Event()
        # Set when a graceful stop begins: the time by which running jobs must end.
        self._drain_deadline: float | None = None
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
        with self._lock:
            return sum(record.status == status for record in self._records.values())

    def readiness(self) -> tuple[bool, str]:
        return (True, "") if self._loaded.is_set() else (False, self._load_error)

    def stop_starting_jobs(self) -> None:
        """Begin a graceful stop: no new job and no queued job starts; running jobs go on.

        Called when SIGTERM arrives, so that the time running jobs get to
        finish (``GATEWAY_SHUTDOWN_TIMEOUT``) counts from then. Queued jobs stay
        queued in their records, and the next gateway process runs them. Jobs
        still running at the deadline are cancelled then, even while a caller
        waits for one and so keeps gunicorn from exiting.
        """
        with self._lock:
            if self._drain_deadline is not None:
                return
            self._drain_deadline = deadline = time.monotonic() + self._settings.shutdown_timeout
            logger.info("stopping: %d running jobs get %g s to finish", len(self._running), self._settings.shutdown_timeout)
            # Callers waiting for a queued job learn that it starts in the next process.
            self._changed(*self._waiters)
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

    def _interrupt_at_deadline(self, deadline: float) -> None:
        with self._lock:
            self._lock.wait_for(lambda: not self._running, timeout=max(0.0, deadline - time.monotonic()))
            self._stop_requested.set()
            running = list(self._running.items())
            self._changed()
        for key, writes in running:
            logger.warning("job %s interrupted: the gateway is stopping", key)
            # A job whose tasks are not sent yet sees the stop before it sends them.
            if writes is not None:
                writes.cancel()

    def _load_then_run(self) -> None:
        delay = 1.0
        while not self._stop_requested.is_set():
            try:
                self._load_records()
                break
            except Exception as exc:
                self._load_failed = True
                if isinstance(exc, StorageError):
                    self._metrics.s3_errors.inc()
                    logger.error("job records could not be read: %s", exc)
                else:
                    logger.exception("job records could not be read")
                self._load_error = f"job records could not be read ({exc}); retrying in {delay:.0f} s"
                self._stop_requested.wait(delay)
                delay = min(delay * 2, 60.0)
        for index in range(self._settings.max_running_jobs):
            runner = threading.Thread(target=self._run_queued_jobs, name=f"job-runner-{index}", daemon=True)
            runner.start()
            self._threads.append(runner)
        sweeper = threading.Thread(target=self._expire_results, name="job-expiry", daemon=True)
        sweeper.start()
        self._threads.append(sweeper)

    def _load_records(self) -> None:
        trusted = trusted_records(self._store.read_records(), self._store.url_for, self._apps.schema_checks())
        for reason in trusted.skipped:
            self._metrics.records_skipped.inc()
            logger.warning("%s; skipped it", reason)
        # Under its own name first, then the old name removed: a rename cut short is finished at the next start.
        for old_name, record in trusted.renames:
            if record is not None:
                self._save(record)
            self._store.delete_record(old_name)
        records = trusted.records
        interrupted = []
        with self._lock:
            # A failed attempt may have filled these in part.
            self._records.clear()
            self._queue.clear()
            for record in records:
                if record.status == RUNNING:
                    record = finish(record, FAILED, error=INTERRUPTED)
                    interrupted.append(record)
                elif record.status == QUEUED:
                    self._queue.append(record.key, record.owner)
                self._records[record.key] = record
        for record in interrupted:
            self._discard_result(record)
            self._save(record)
        logger.info(
            "read %d job records (%d interrupted, %d queued, %d renamed)", len(records), len(interrupted), len(self._queue), len(trusted.renames)
        )
        self._loaded.set()

    # -- the API ----------------------------------------------------------

    def _require_loaded(self) -> None:
        # Right after start-up the records are still being read; once a read has failed, say so at once.
        if not self._loaded.wait(0 if self._load_failed else 10):
            raise StorageError(self._load_error)

    @property
    def limits(self) -> Limits:
        """The settings an app's plan keeps to."""
        settings = self._settings
        return Limits(settings.max_elements, settings.max_chunks, settings.default_shards, settings.zarr_format)

    def source(self, owner: str | None, job_id: str) -> SourceResult | str | None:
        """``owner``'s done job ``job_id`` as a source; the status of one that is not done; None when there is none."""
        self._require_loaded()
        with self._lock:
            return self._source(JobKey(owner, job_id))

    def _source(self, key: JobKey) -> SourceResult | str | None:
        """As :meth:`source`; called with the lock held."""
        record = self._records.get(key)
        if record is None or key in self._reserved and record.status == DONE:
            # A done job being deleted is gone to a new reader.
            return None
        if record.status != DONE:
            return record.status
        return SourceResult(record.job_id, str(record.finished_at), record.work.output, record.place)

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
        job_id = validate_job_id(job_id) if job_id is not None else new_job_id()
        self._require_loaded()
        key = JobKey(owner, job_id)
        place = place_for(job_id, owner)
        url = self._store.url_for(place)
        sources = [JobKey(owner, run.job_id) for run in work.sources.values()]
        with self._lock:
            # A submission or deletion of this job, or of a source, under way decides what this one finds.
            self._lock.wait_for(lambda: key not in self._reserved and not any(source in self._reserved for source in sources))
            if (repeated := self._repeated(key, work, ttl, left_to_gateway)) is not None:
                return repeated, False
            if self._drain_deadline is not None:
                raise GatewayStopping("the gateway is stopping and takes no new jobs; submit the job again in a minute")
            for run in work.sources.values():
                found = self._source(JobKey(owner, run.job_id))
                if not isinstance(found, SourceResult) or found.finished_at != run.finished_at:
                    raise SourceGone(f"source {run.job_id!r} was deleted or made again while the job was submitted; submit it again")
            previous = self._records.get(key)
            self._admit(owner, work)
            # Reserved until its record is saved: a concurrent submission of this job waits for it.
            self._reserved.add(key)
            self._submitting[key] = work
        try:
            if previous is not None:
                self._store.delete(previous.place)
            if self._store.exists(place):
                raise JobAlreadyExists(job_id, url)
            record = JobRecord(job_id, work, url, owner=owner, place=place, ttl=ttl)
            self._store.write_record(record.record_name, record.to_stored())
            with self._lock:
                self._records[key] = record
                self._queue.append(key, owner)
                queued = replace(record)
        finally:
            with self._lock:
                self._reserved.discard(key)
                del self._submitting[key]
                self._changed(key)
        self._metrics.jobs_submitted.labels(work.app).inc()
        logger.info("job %s submitted: %s %s", key, work.app, work.parameters, extra=job_event_fields(job_id, "submitted", QUEUED))
        return queued, True

    def repeat_of(
        self, job_id: str, work: JobWork, owner: str | None, ttl: int | None, left_to_gateway: Collection[str] = ()
    ) -> JobRecord | None:
        """``owner``'s job of this id if a submission of this work would return it (it is queued, running
        or done with it), as :meth:`submit` decides; None if it would queue a new job."""
        self._require_loaded()
        key = JobKey(owner, validate_job_id(job_id))
        with self._lock:
            self._lock.wait_for(lambda: key not in self._reserved)
            return self._repeated(key, work, ttl, left_to_gateway)

    def _repeated(self, key: JobKey, work: JobWork, ttl: int | None, left_to_gateway: Collection[str]) -> JobRecord | None:
        """The job a submission of this work repeats, or None; :class:`JobAlreadyExists` for other parameters. Lock held."""
        previous = self._records.get(key)
        if previous is None or previous.status in RESUBMITTABLE:
            return None
        differing = differences(previous.work.compared(previous.ttl), work.compared(ttl), left_to_gateway)
        if differing:
            raise JobAlreadyExists(key.job_id, previous.url, differing)
        return replace(previous)

    def _admit(self, owner: str | None, work: JobWork) -> None:
        """:class:`AdmissionRefused` if a job of ``owner`` would be over a limit on queued jobs or stored bytes; called with the lock held."""
        settings = self._settings
        nbytes = work.output.nbytes
        # Submissions under way count as queued: a burst of them must not pass a limit together.
        submitting = [pending for key, pending in self._submitting.items() if key.owner == owner]
        if settings.owner_quota_bytes is not None:
            used = self._usage(owner)[0] + sum(pending.output.nbytes for pending in submitting)
            if used + nbytes > settings.owner_quota_bytes:
                raise AdmissionRefused(
                    "quota_exceeded", f"{owner or 'this gateway'} has {used} bytes of results done, queued or running, "
                    f"and this job adds {nbytes}", settings.owner_quota_bytes, "GATEWAY_OWNER_QUOTA_BYTES",
                    "delete finished jobs (DELETE /jobs/<id>) or submit a smaller one", usage=used,
                )  # fmt: skip
        queued = len(self._queue) + len(self._submitting)
        if queued >= settings.max_queued_jobs:
            raise AdmissionRefused(
                "too_many_queued_jobs", f"{queued} jobs are queued", settings.max_queued_jobs,
                "GATEWAY_MAX_QUEUED_JOBS", "submit it again once some have started",
            )  # fmt: skip
        # Without authentication every caller is one owner: the queue's limit is the only one.
        if owner is None:
            return
        held = self._queue.count(owner) + len(submitting) + sum(key.owner == owner for key in self._running)
        if held >= settings.max_jobs_per_owner:
            raise AdmissionRefused(
                "too_many_jobs_of_owner", f"{owner} has {held} jobs queued or running",
                settings.max_jobs_per_owner, "GATEWAY_MAX_JOBS_PER_OWNER", "submit it again once one of them has finished",
            )  # fmt: skip

    def _taking_space(self) -> list[JobRecord]:
        """The done, queued and running jobs: their results are stored or will be; called with the lock held."""
        return [record for record in self._records.values() if record.status in TAKING_SPACE]

    def _usage(self, owner: str | None) -> tuple[int, int]:
        jobs = [record for record in self._taking_space() if record.owner == owner]
        return sum(record.work.output.nbytes for record in jobs), len(jobs)

    def usage(self, owner: str | None) -> tuple[int, int]:
        """Bytes of ``owner``'s done, queued and running jobs, and how many jobs they are."""
        self._require_loaded()
        with self._lock:
            return self._usage(owner)

    def stored_bytes(self) -> int:
        """Bytes of every done, queued and running job's result."""
        with self._lock:
            return sum(record.work.output.nbytes for record in self._taking_space())

    def get(self, key: JobKey) -> JobRecord:
        """The job's record; :class:`JobNotFound` if there is none."""
        self._require_loaded()
        with self._lock:
            return replace(self._record(key))

    def _record(self, key: JobKey) -> JobRecord:
        record = self._records.get(key)
        if record is None:
            raise JobNotFound(f"no job {key.job_id!r}")
        return record

    @property
    def stopping(self) -> bool:
        return self._drain_deadline is not None

    def wait(self, key: JobKey, timeout: float | None = None, waiter: Waiter | None = None) -> JobRecord:
        """Block until the job is finished, will not start before the gateway stops, ``timeout`` s have passed or the waiter hangs up; its record.

        The waiter is woken at each change of this job's status only, so that
        a room of waiting callers costs no more than its jobs' changes.
        """
        waiter = waiter or Waiter()
        deadline = None if timeout is None else time.monotonic() + timeout

        def over() -> bool:
            record = self._records.get(key)
            if record is None or record.status in FINISHED:
                return True
            return record.status == QUEUED and self._drain_deadline is not None

        with self._lock:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            while True:
                waiter.wake.clear()
                with self._lock:
                    if over():
                        break
                remaining = None if deadline is None else deadline - time.monotonic()
                if waiter.gone or (remaining is not None and remaining <= 0):
                    break
                waiter.wake.wait(remaining)
        finally:
            with self._lock:
                waiting = self._waiters[key]
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[key]
        with self._lock:
            if key not in self._records:
                raise JobNotFound(f"job {key.job_id!r} was deleted")
            return replace(self._records[key])

    def _changed(self, *keys: JobKey) -> None:
        """Wake what waits on the manager's state and the callers waiting for these jobs; called with the lock held."""
        self._lock.notify_all()
        for key in keys:
            for waiter in self._waiters.get(key, ()):
                waiter.wake.set()

    def list(
        self, status: str | None, limit: int, cursor: str | None, visible_to: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first, only ``visible_to``'s when given; the cursor, when not None, fetches the next page."""
        self._require_loaded()
        after = decode_cursor(cursor) if cursor else None
        with self._lock:
            records = sorted(self._records.values(), key=sort_key, reverse=True)
        if visible_to is not None:
            records = [record for record in records if record.owner == visible_to]
        if status is not None:
            records = [record for record in records if record.status == status]
        if after is not None:
            records = [record for record in records if sort_key(record) < after]
        page = [replace(record) for record in records[:limit]]
        return page, (encode_cursor(page[-1]) if len(records) > limit else None)

    def cancel_or_delete(self, key: JobKey) -> JobRecord | None:
        """Cancel a queued or running job and return its record; delete a finished one and return None.

        The jobs that read a done job being deleted fail first, saying why: a
        queued one at once, a running one once its tasks have stopped.
        """
        self._require_loaded()
        with self._delete_lock:
            with self._lock:
                # A submission of this job under way decides which run there is to cancel or delete.
                self._lock.wait_for(lambda: key not in self._reserved)
                record = self._record(key)
                if record.status == RUNNING:
                    self._stop_running(key, None)
                    self._lock.wait_for(lambda: self._records[key].status in FINISHED)
                    return replace(self._records[key])
                if record.status == QUEUED:
                    self._queue.remove(key)
                    cancelled = self._records[key] = finish(record, CANCELLED)
                    self._changed(key)
                # Reserved while the store changes: a resubmission of its id, or a new reader, must not find it first.
                self._reserved.add(key)
            if record.status == QUEUED:
                try:
                    self._save_quietly(cancelled)
                finally:
                    with self._lock:
                        self._reserved.discard(key)
                        self._changed(key)
                return replace(cancelled)
            try:
                self._fail_readers(record)
            except BaseException:
                with self._lock:
                    self._reserved.discard(key)
                    self._changed(key)
                raise
            self._delete_reserved(record)
        logger.info("job %s deleted", key)
        return None

    def _readers(self, source: JobKey) -> set[JobKey]:
        """The queued and running jobs that read ``source``; called with the lock held."""
        return {key for key, record in self._records.items() if record.status in (QUEUED, RUNNING) and _reads(key, record.work, source)}

    def _fail_readers(self, source: JobRecord) -> None:
        """Fail every job that reads ``source``, which is reserved for its deletion; return once none of them runs."""
        error = {"code": SourceGone.code, "message": f"its source {source.job_id!r} was deleted before the job finished"}
        failed = []
        with self._lock:
            # Submissions that found the source before it was reserved are queued first, then failed below.
            self._lock.wait_for(lambda: not any(_reads(key, work, source.key) for key, work in self._submitting.items()))
            readers = self._readers(source.key)
            for key in readers:
                record = self._records[key]
                if record.status == RUNNING:
                    self._stop_running(key, error)
                    continue
                self._queue.remove(key)
                final = self._records[key] = finish(record, FAILED, error=error)
                failed.append(final)
                self._metrics.job_finished(FAILED, 0.0, record.work.app)
                self._changed(key)
            self._lock.wait_for(lambda: all(self._records[key].status in FINISHED for key in readers if key in self._records))
        for record in failed:
            logger.info("job %s failed: %s", record.key, error["message"])
            self._save_quietly(record)

    def _stop_running(self, key: JobKey, error: dict[str, str] | None) -> None:
        """Stop a running job, which then ends cancelled (``error`` None) or failed with ``error``; called with the lock held."""
        self._cancel_requested[key] = error
        # A job whose tasks are not sent yet sees the request before it sends them.
        if (writes := self._running.get(key)) is not None:
            writes.cancel()

    def _delete_reserved(self, record: JobRecord) -> None:
        """Remove a finished job's result and record.

        The job is reserved meanwhile: a submission of its id waits until it is
        gone, rather than finding it and then losing it to this deletion.
        """
        try:
            self._store.delete(record.place)
            self._store.delete_record(record.record_name)
            with self._lock:
                del self._records[record.key]
        finally:
            with self._lock:
                self._reserved.discard(record.key)
                self._changed(record.key)

    # -- expiry -----------------------------------------------------------

    def _expire_results(self) -> None:
        """Every expiry interval, delete the finished jobs whose time is up, until the gateway stops.

        The times are in the records, so what a stopped gateway left is deleted by the next.
        A job that is queued or running never expires: it has no expiry time yet.
        """
        while not self._stop_requested.wait(self._settings.expiry_interval):
            now = datetime.now(UTC)
            with self._lock:
                due = [key for key, record in self._records.items() if has_expired(record, now)]
            for key in due:
                try:
                    self._delete_if_expired(key, now)
                except StorageError as exc:
                    self._metrics.s3_errors.inc()
                    logger.error("expired job %s could not be deleted, trying again at the next sweep: %s", key, exc)
                except Exception:
                    logger.exception("expired job %s could not be deleted", key)

    def _delete_if_expired(self, key: JobKey, now: datetime) -> None:
        with self._delete_lock:
            with self._lock:
                self._lock.wait_for(lambda: key not in self._reserved)
                # Submitted again since the sweep looked, or deleted: then it is not this one's time.
                record = self._records.get(key)
                if record is None or not has_expired(record, now):
                    return
                if self._readers(key):
                    # Expiry never fails a job: a result that jobs read expires at the first sweep after they end.
                    logger.info("job %s expired, and is kept while jobs read it", key)
                    return
                self._reserved.add(key)
            self._delete_reserved(record)
        self._metrics.jobs_expired.inc()
        logger.info("job %s expired and was deleted", key, extra=job_event_fields(key.job_id, "expired", record.status))

    # -- running ----------------------------------------------------------

    def _next_job(self) -> JobRecord | None:
        """The next queued job, once there is a working cluster to run it on; None when stopping.

        Jobs wait in the queue, not half-started, while there is no cluster,
        and one that was lost while a runner waited for a job is replaced first.
        """
        while True:
            while not self._cluster.wait_until_ready(1.0):
                if self._drain_deadline is not None:
                    return None
            with self._lock:
                self._lock.wait_for(lambda: self._queue or self._drain_deadline is not None)
                if self._drain_deadline is not None:
                    return None
                if not self._cluster.wait_until_ready(0):
                    continue
                record = self._records[self._queue.popleft()]
                record.status, record.started_at = RUNNING, now()
                self._running[record.key] = None
                self._changed(record.key)
            logger.info("job %s started", record.key, extra=job_event_fields(record.job_id, "started", RUNNING))
            return record

    def _run_queued_jobs(self) -> None:
        while True:
            record = None
            try:
                record = self._next_job()
                if record is None:
                    return
                self._run(record)
            except Exception:
                # A runner that died would leave its slot empty for the process's life.
                self._metrics.runner_errors.inc()
                logger.exception("a job runner failed%s; it goes on", f" on job {record.key}" if record else "")
                if record is not None:
                    self._end_unexpectedly(record)

    def _end_unexpectedly(self, record: JobRecord) -> None:
        error = {"code": "internal_error", "message": "the gateway failed while running this job; see its log"}
        key = record.key
        with self._lock:
            final = None
            if self._records.get(key) is record and record.status == RUNNING:
                final = self._records[key] = finish(record, FAILED, error=error)
            self._running.pop(key, None)
            self._cancel_requested.pop(key, None)
            self._changed(key)
        if final is not None:
            self._discard_result(record)
            self._save_quietly(final)

    def _run(self, record: JobRecord) -> None:
        started = time.monotonic()
        status, error = DONE, None
        key = record.key
        try:
            with self._lock:
                # Its app as offered now, and its sources as they are now: a source being deleted fails it here.
                work = runnable(record.work, self._apps, lambda job_id: self._source(JobKey(record.owner, job_id)))
            result = self._store.pending_result(record.record_name, record.place, record.work.output, self._settings.zarr_format)
            self._store.begin_result(result, self._stored(record))
            client = self._cluster.client()
            writes = ChunkWrites(client, result.target, work.app, work.plan, work.source_arrays, record.job_id, min_tasks=self._settings.n_workers)
            with self._lock:
                self._running[key] = writes
                if self._stop_requested.is_set() or key in self._cancel_requested:
                    writes.cancel()
            writes.wait(self._settings.job_timeout, lambda written: self._count_chunks(record, written))
            self._store.mark_complete(result)
        except JobCancelled:
            with self._lock:
                reason = self._cancel_requested.get(key)
            status = FAILED if self._stop_requested.is_set() or reason is not None else CANCELLED
            error = INTERRUPTED if self._stop_requested.is_set() else reason
        except Exception as exc:
            if not isinstance(exc, GatewayError):
                logger.exception("job %s failed unexpectedly", key)
            code = exc.code if isinstance(exc, GatewayError) else JobFailed.code
            status, error = FAILED, {"code": code, "message": str(exc)}
            if isinstance(exc, StorageError):
                self._metrics.s3_errors.inc()
        if status != DONE:
            self._discard_result(record)
        with self._lock:
            final = finish(record, status, error=error, seconds=round(time.monotonic() - started, 3))
        # Saved before it shows as finished, so that a DELETE of the finished job cannot race the save.
        self._save_quietly(final)
        # Counted and logged before it shows as finished: a caller who learns the job is done finds both.
        self._metrics.job_finished(status, final.seconds or 0.0, record.work.app)
        logger.info(
            "job %s %s in %.3f s%s", key, status, final.seconds, f": {error['message']}" if error else "",
            extra=job_event_fields(record.job_id, status, status, final.seconds),
        )  # fmt: skip
        with self._lock:
            self._records[key] = final
            self._running.pop(key, None)
            self._cancel_requested.pop(key, None)
            self._changed(key)

    def _count_chunks(self, record: JobRecord, written: int) -> None:
        with self._lock:
            record.chunks_written += written

    def _stored(self, record: JobRecord) -> dict[str, Any]:
        # Runner threads count chunks into the record while it is being copied.
        with self._lock:
            return record.to_stored()

    def _save(self, record: JobRecord) -> None:
        self._store.write_record(record.record_name, self._stored(record))

    def _save_quietly(self, record: JobRecord) -> None:
        try:
            self._save(record)
        except StorageError:
            self._metrics.s3_errors.inc()
            logger.exception("the final record of job %s could not be saved", record.key)

    def _discard_result(self, record: JobRecord) -> None:
        # A half-written array must not stand where a result is expected.
        try:
            self._store.delete(record.place)
        except StorageError:
            self._metrics.s3_errors.inc()
            logger.exception("the partial result of job %s could not be removed", record.key)


def _reads(key: JobKey, work: JobWork, source: JobKey) -> bool:
    """Whether the job ``key`` of this work reads ``source``: a job reads its own owner's results only."""
    return key.owner == source.owner and any(run.job_id == source.job_id for run in work.sources.values())
