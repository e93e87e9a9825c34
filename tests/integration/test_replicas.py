"""Two gateway replicas on one SeaweedFS bucket (a store with conditional writes): one run per id, jobs kept across a replica's death and a rolling upgrade."""

import collections
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import zarr

from conftest import SEAWEED_BUCKET
from devtools.gunicorn_gateway import RunningGateway, start_gunicorn_gateway
from devtools.processes import stop_process
from devtools.seaweed_s3 import SeaweedS3
from helpers import descendants, environ_on, gateways_cluster, reachable_cluster, wait_for, wait_for_the_tasks, workers_held
from science_gateway.apps.random_array import random_chunk
from science_gateway.region_writes import chunk_selections

# Short leases, so that a dead replica's jobs are taken over within seconds.
LEASE_SECONDS = "3"
SMALL_JOB = {"shape": [100, 100], "chunks": [50, 50]}
BIG_JOB = {"shape": [2000, 2000], "chunks": [100, 100]}
# What a caller may get from a replica during an upgrade: a job, a repeat, a limit, or "try again" with Retry-After.
UPGRADE_ANSWERS = {200, 202, 429, 503}


class Replicas:
    """Gateway replicas under gunicorn on one results prefix, each stopped at the end however the test ends."""

    def __init__(self, server: SeaweedS3, prefix: str, base: Path, stack: ExitStack) -> None:
        self.server, self.prefix, self.base, self._stack = server, prefix, base, stack

    def start(self, name: str, **settings: str) -> RunningGateway:
        directory = self.base / name
        directory.mkdir()
        chosen = {"GATEWAY_REPLICA_ID": name, "GATEWAY_REPLICA_LEASE_SECONDS": LEASE_SECONDS, "GATEWAY_N_WORKERS": "1"}
        chosen |= {**reachable_cluster(directory), **settings}
        environ = environ_on(self.server, f"s3://{self.prefix}", **chosen)
        gateway = start_gunicorn_gateway(environ, log_file=directory / "gateway.log")
        self._stack.callback(stop_process, gateway.process, 60)
        return gateway

    def cluster(self, name: str) -> Callable[[], object]:
        return lambda: gateways_cluster(self.base / name)


@pytest.fixture
def replicas(seaweed: SeaweedS3, tmp_path: Path) -> Iterator[Replicas]:
    with ExitStack() as stack:
        yield Replicas(seaweed, f"{SEAWEED_BUCKET}/replicas-{secrets.token_hex(4)}", tmp_path, stack)


def status(gateway: RunningGateway, job_id: str) -> dict:
    response = requests.get(f"{gateway.url}/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_status(gateway: RunningGateway, job_id: str, wanted: str, timeout: float = 120) -> dict:
    return wait_for(lambda: (record := status(gateway, job_id))["status"] == wanted and record, timeout, f"{job_id} to be {wanted}")


def runs(job_id: str, *gateways: RunningGateway) -> int:
    """How many runs of the job the replicas completed: each logs each (a run a stopping replica handed back never completed)."""
    return sum(gateway.log().count(f"job {job_id} done in ") for gateway in gateways)


@contextmanager
def held(replicas: Replicas, name: str) -> Iterator[object]:
    with replicas.cluster(name)() as cluster, workers_held(cluster):
        yield cluster


def test_a_replica_that_starts_while_another_runs_a_job_leaves_it_running(replicas: Replicas) -> None:
    first = replicas.start("first")
    with held(replicas, "first") as cluster:
        assert requests.post(f"{first.url}/jobs", json={"job_id": "kept", **BIG_JOB}, timeout=30).status_code == 202
        wait_for_the_tasks(cluster, "kept")
        second = replicas.start("second")
        # The second replica sees the job as the first runs it, and has not interrupted it.
        assert status(second, "kept")["status"] == "running"
        assert status(first, "kept")["status"] == "running"
    assert wait_for_status(first, "kept", "done")["error"] is None
    assert wait_for_status(second, "kept", "done")["progress"] == {"chunks_written": 400, "chunks_total": 400}
    assert runs("kept", first, second) == 1


def submit_at_once(gateways: list[RunningGateway], bodies: list[dict]) -> list[requests.Response]:
    """POST /jobs of each body to its gateway, all released together; the answers in order."""
    barrier = threading.Barrier(len(gateways))
    answers: list[requests.Response | None] = [None] * len(gateways)
    failures: list[BaseException] = []

    def send(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            answers[index] = requests.post(f"{gateways[index].url}/jobs", json=bodies[index], timeout=60)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(gateways))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def test_one_id_sent_to_both_replicas_at_once_runs_once(replicas: Replicas) -> None:
    first, second = replicas.start("first"), replicas.start("second")
    rounds = [f"same-{index}" for index in range(10)]
    for job_id in rounds:
        body = {"job_id": job_id, "seed": 5, **SMALL_JOB}
        answers = submit_at_once([first, second], [body, body])
        # One replica queued it; the other found that job, as a repeat of a submission of a queued or running job does: 202 both.
        assert [answer.status_code for answer in answers] == [202, 202], [answer.text for answer in answers]
        assert answers[0].json()["submitted_at"] == answers[1].json()["submitted_at"]
    for job_id in rounds:
        wait_for_status(first, job_id, "done")
        assert wait_for_status(second, job_id, "done")["error"] is None
        assert runs(job_id, first, second) == 1


def test_one_id_with_other_parameters_at_both_replicas_at_once_is_one_job_and_one_409(replicas: Replicas) -> None:
    first, second = replicas.start("first"), replicas.start("second")
    answers = submit_at_once([first, second], [{"job_id": "differ", "seed": 1, **SMALL_JOB}, {"job_id": "differ", "seed": 2, **SMALL_JOB}])
    assert sorted(answer.status_code for answer in answers) == [202, 409]
    winner = next(answer.json() for answer in answers if answer.status_code == 202)
    loser = next(answer.json() for answer in answers if answer.status_code == 409)
    assert loser["error"]["code"] == "job_exists"
    assert set(loser["error"]["differences"]) == {"seed"}
    assert wait_for_status(second, "differ", "done")["parameters"]["seed"] == winner["parameters"]["seed"]
    assert runs("differ", first, second) == 1


def test_the_queued_jobs_of_a_killed_replica_are_finished_by_the_other(replicas: Replicas) -> None:
    doomed = replicas.start("doomed", GATEWAY_MAX_RUNNING_JOBS="1")
    survivor = replicas.start("survivor")
    queued = [f"waiting-{index}" for index in range(3)]
    holding = ExitStack()
    cluster = holding.enter_context(replicas.cluster("doomed")())
    holding.enter_context(workers_held(cluster))
    try:
        assert requests.post(f"{doomed.url}/jobs", json={"job_id": "cut", **BIG_JOB}, timeout=30).status_code == 202
        wait_for_the_tasks(cluster, "cut")
        for job_id in queued:
            assert requests.post(f"{doomed.url}/jobs", json={"job_id": job_id, **SMALL_JOB}, timeout=30).status_code == 202
        assert [status(survivor, job_id)["status"] for job_id in queued] == ["queued"] * 3
    finally:
        # Killed as a pod dies, every process at once, its job held: the hold's release is moot.
        for process in [*descendants(doomed.process.pid), psutil.Process(doomed.process.pid)]:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        doomed.process.wait(30)
        with suppress(Exception):
            holding.close()
    for job_id in queued:
        assert wait_for_status(survivor, job_id, "done", timeout=120)["error"] is None
        assert runs(job_id, doomed, survivor) == 1
    # Its running job stopped with it: failed, saying so, never done from a half-written array.
    cut = wait_for_status(survivor, "cut", "failed", timeout=60)
    assert cut["error"]["code"] == "interrupted"
    assert "replica" in cut["error"]["message"]


def test_a_rolling_upgrade_loses_no_job_and_runs_none_twice(replicas: Replicas) -> None:
    """Three owners' callers submit through the "Service" (the replicas that are not stopping) while the old replica
    is stopped with SIGTERM and a new one started: every answer is one a notebook can act on, and every job accepted
    ends done, run once."""
    old = replicas.start("old", GATEWAY_MAX_RUNNING_JOBS="1")
    kept = replicas.start("kept")
    serving = [old, kept]
    accepted: list[tuple[str, str]] = []
    answers: list[tuple[int, str | None]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    in_flight = collections.Counter[str]()
    done_submitting = threading.Event()

    def submit(owner: str) -> None:
        try:
            index = 0
            while not done_submitting.is_set() or index < 6:
                with lock:
                    gateway = serving[index % len(serving)]
                    in_flight[gateway.url] += 1
                job_id = f"{owner}-{index}"
                try:
                    answer = requests.post(f"{gateway.url}/jobs", json={"job_id": job_id, **SMALL_JOB}, timeout=60)
                finally:
                    with lock:
                        in_flight[gateway.url] -= 1
                with lock:
                    answers.append((answer.status_code, answer.headers.get("Retry-After")))
                    if answer.status_code == 202:
                        accepted.append((job_id, gateway.url))
                index += 1
        except BaseException as exc:  # noqa: BLE001 - recorded for the test's thread
            failures.append(exc)

    callers = [threading.Thread(target=submit, args=(owner,)) for owner in ("ann", "ben", "cat")]
    for caller in callers:
        caller.start()
    wait_for(lambda: len(accepted) >= 6, 60, "the first jobs to be accepted")
    # The rollout: the new pod first (maxSurge 1), then the old one stopped; the Service stops sending it requests.
    new = replicas.start("new")
    with lock:
        serving[:] = [kept, new]
    # SIGTERM once the requests sent to it before have their answers, as the pod's preStop pause gives them.
    wait_for(lambda: in_flight[old.url] == 0, 60, "the requests sent to the old replica to be answered")
    old.process.terminate()
    assert old.process.wait(120) == 0
    done_submitting.set()
    for caller in callers:
        caller.join(timeout=300)
    assert not any(caller.is_alive() for caller in callers), "a caller still submitting"
    assert not failures, failures
    # The stop handed its queued jobs to the others: the path under test was taken.
    assert "queued jobs handed over to the other replicas" in old.log()
    assert answers, "no answer"
    assert {code for code, _ in answers} <= UPGRADE_ANSWERS, answers
    assert all(retry_after for code, retry_after in answers if code in (429, 503)), answers
    assert accepted
    for job_id, _ in accepted:
        assert wait_for_status(new, job_id, "done", timeout=180)["error"] is None
        assert runs(job_id, old, kept, new) == 1


def test_an_owners_quota_holds_across_replicas_once_each_has_read_the_others_jobs(replicas: Replicas, measured: Callable[[str], None]) -> None:
    """A quota of two jobs' bytes: a job accepted at one replica counts at the other once that one has read it;
    a burst at both at once is bounded by each replica's own count (docs/operations.md, "Limits across replicas")."""
    quota = {"GATEWAY_OWNER_QUOTA_BYTES": str(2 * 100 * 100 * 4)}
    first, second = replicas.start("first", **quota), replicas.start("second", **quota)

    def submit(gateway: RunningGateway, job_id: str) -> requests.Response:
        return requests.post(f"{gateway.url}/jobs", json={"job_id": job_id, **SMALL_JOB}, timeout=60)

    def listed(gateway: RunningGateway, job_id: str) -> bool:
        return job_id in {job["job_id"] for job in requests.get(f"{gateway.url}/jobs", timeout=30).json()["jobs"]}

    assert submit(first, "quota-1").status_code == 202
    wait_for(lambda: listed(second, "quota-1"), 60, "the second replica to read the first's job")
    assert submit(second, "quota-2").status_code == 202
    wait_for(lambda: listed(first, "quota-2"), 60, "the first replica to read the second's job")
    refused = [submit(gateway, f"quota-3-{index}") for index, gateway in enumerate((first, second))]
    assert [(answer.status_code, answer.json()["error"]["code"]) for answer in refused] == [(429, "quota_exceeded")] * 2

    # A burst at both at once, after the first two are deleted: each replica admits what its own count allows.
    for job_id, gateway in (("quota-1", first), ("quota-2", second)):
        wait_for_status(gateway, job_id, "done")
        assert requests.delete(f"{gateway.url}/jobs/{job_id}", timeout=60).status_code == 204
    wait_for(lambda: not listed(first, "quota-2") and not listed(second, "quota-1"), 60, "each replica to read the other's deletion")
    burst = submit_at_once([first, second, first, second], [{"job_id": f"burst-{index}", **SMALL_JOB} for index in range(4)])
    accepted = sum(answer.status_code == 202 for answer in burst)
    assert {answer.status_code for answer in burst} <= {202, 429}
    assert 2 <= accepted <= 4, "at most the quota at each replica"
    measured(f"replicas: a burst of 4 jobs at 2 replicas under a 2-job quota: {accepted} admitted")


@contextmanager
def frozen(gateway: RunningGateway) -> Iterator[None]:
    """Every process of a replica stopped (SIGSTOP) while the block runs: a replica that sees and does nothing, yet alive."""
    processes = [psutil.Process(gateway.process.pid), *descendants(gateway.process.pid)]
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            with suppress(psutil.NoSuchProcess):
                process.resume()


def test_a_job_cancelled_at_another_replica_is_not_run_again_until_its_holder_has_stopped_it(replicas: Replicas) -> None:
    """Cancel at the second replica a job the first runs, then submit the id again there: 503 job_stopping until the
    first has stopped its tasks and removed what they wrote; the new run is then the second's own, with its own values."""
    # Leases of 30 s: the first replica, frozen for a moment, is still alive to the second throughout.
    lease = {"GATEWAY_REPLICA_LEASE_SECONDS": "30"}
    first, second = replicas.start("first", **lease), replicas.start("second", **lease)
    with held(replicas, "first") as cluster:
        assert requests.post(f"{first.url}/jobs", json={"job_id": "again", "seed": 1, **BIG_JOB}, timeout=30).status_code == 202
        wait_for_the_tasks(cluster, "again")
        with frozen(first):
            cancelled = requests.delete(f"{second.url}/jobs/again", timeout=60)
            refused = requests.post(f"{second.url}/jobs", json={"job_id": "again", "seed": 2, **BIG_JOB}, timeout=60)
        # The first replica sees the cancel at its next look, stops the job and says so.
        wait_for(lambda: "was ended by another replica" in first.log(), 60, "the first replica to stop the job")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert (refused.status_code, refused.json()["error"]["code"], refused.headers["Retry-After"]) == (503, "job_stopping", "5")

    def submitted_again() -> requests.Response | None:
        answer = requests.post(f"{second.url}/jobs", json={"job_id": "again", "seed": 2, **BIG_JOB}, timeout=60)
        return answer if answer.status_code == 202 else None

    wait_for(submitted_again, 60, "the id to be taken again once the first replica has stopped its run", interval=1)
    record = wait_for_status(second, "again", "done")
    assert (record["parameters"]["seed"], record["progress"]["chunks_written"]) == (2, 400)
    assert runs("again", first, second) == 1
    options = {"key": replicas.server.access_key, "secret": replicas.server.secret_key, "endpoint_url": replicas.server.endpoint_url}
    array = zarr.open_group(record["url"], mode="r", storage_options={**options, "skip_instance_cache": True})["data"]
    for index, selection in enumerate(chunk_selections(array.shape, array.chunks)):
        np.testing.assert_array_equal(array[selection], random_chunk(2, index, selection, "float32"))
