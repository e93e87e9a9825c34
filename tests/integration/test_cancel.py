"""POST /jobs/<id>/cancel: a client's way to stop a job, which never deletes one that finished first."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3
from helpers import gateways_cluster, wait_for_the_stop, wait_for_the_tasks, workers_held

PREFIX = f"{BUCKET}/cancel"


@pytest.fixture(scope="module")
def served(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from serve_for_module(tmp_path_factory, "cancel", f"s3://{PREFIX}")


BURST = 8


def test_a_burst_of_cancels_of_a_running_job_all_answer_it_cancelled_and_a_later_one_the_same(served: RunningGateway, http) -> None:
    with ThreadPoolExecutor(BURST) as pool, gateways_cluster(served.log_file.parent) as cluster:
        with workers_held(cluster):
            assert http.post(f"{served.url}/jobs", json={"job_id": "to-cancel"}, timeout=30).status_code == 202
            wait_for_the_tasks(cluster, "to-cancel")
            burst = [pool.submit(http.post, f"{served.url}/jobs/to-cancel/cancel", timeout=120) for _ in range(BURST)]
            wait_for_the_stop(cluster, "to-cancel")
        answers = [cancelled.result(timeout=120) for cancelled in burst]
    again = http.post(f"{served.url}/jobs/to-cancel/cancel", timeout=30)
    record = http.get(f"{served.url}/jobs/to-cancel", timeout=30).json()

    assert [(answer.status_code, answer.json()["status"]) for answer in answers] == [(200, "cancelled")] * BURST
    assert (again.status_code, again.json()) == (200, record)


def test_a_done_job_is_not_cancelled_and_keeps_its_result(served: RunningGateway, http) -> None:
    done = http.get(f"{served.url}/submit_job/done-before-its-cancel?shape=100,100", timeout=120).json()
    assert done["status"] == "done"

    refused = http.post(f"{served.url}/jobs/done-before-its-cancel/cancel", timeout=30)

    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_finished"
    assert refused.json()["error"]["job"] == done
    assert http.get(f"{done['http_url']}/zarr.json", timeout=30).status_code == 200, "its result is still there"


@pytest.mark.parametrize(("method", "path", "status"), [("POST", "/jobs/no-such-job/cancel", 404), ("GET", "/jobs/any-job/cancel", 405)])
def test_what_cannot_be_cancelled(served: RunningGateway, http, method: str, path: str, status: int) -> None:
    assert http.request(method, f"{served.url}{path}", timeout=30).status_code == status
