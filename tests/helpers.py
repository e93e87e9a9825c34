"""Shared test helpers: waiting on conditions and checking stored results."""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import fsspec
import nbformat
import numpy as np
import psutil
import pytest
import requests
import websocket
import xarray as xr
import yaml
import zarr
from flask import Flask
from nbclient import NotebookClient
from obstore.store import S3Store

from devtools.local_s3 import LocalS3
from gateway import create_app, services
from science_gateway.apps.base import Limits
from science_gateway.apps.random_array import RandomArray, random_chunk
from science_gateway.job_work import JobWork, plan_work
from science_gateway.region_writes import chunk_selections
from science_gateway.settings import load_settings

SHAPE = (1000, 1000)
CHUNKS = (100, 100)

# The form of every password, secret key and token the tests make: the audit of secrets
# (test_secrets_audit.py) finds each by it. Those a server makes (tokens a hub issues,
# moto's keys) are added to the fixture ``audited_secrets`` instead.
SECRET_FORM = r"test-secret-[0-9a-f]{24}"


def new_secret() -> str:
    """A password, secret key or token for a test's server or gateway, in the form the audit of secrets looks for."""
    return f"test-secret-{secrets.token_hex(12)}"


def environ_on(server: LocalS3, results_url: str, **settings: str) -> dict[str, str]:
    """The environment of a gateway on ``server`` (rclone's or SeaweedFS's): this process's, with the server's AWS_*
    variables instead of the session's, the results URL and ``settings``."""
    return {**os.environ, **server.environ(), "GATEWAY_RESULTS_URL": results_url, **settings}


def object_store(server: LocalS3, bucket: str) -> S3Store:
    """An obstore client (the gateway's) of a bucket on ``server``, with its credentials given, not read from os.environ."""
    return S3Store(
        bucket, endpoint=server.endpoint_url, access_key_id=server.access_key, secret_access_key=server.secret_key,
        region="us-east-1", client_options={"allow_http": server.endpoint_url.startswith("http://")},
    )  # fmt: skip


def server_fs(server: LocalS3) -> fsspec.AbstractFileSystem:
    """s3fs (the gateway's listings, reads and deletions) on ``server``, with its credentials given, not read from os.environ."""
    return fsspec.filesystem(
        "s3", key=server.access_key, secret=server.secret_key, endpoint_url=server.endpoint_url,
        skip_instance_cache=True, use_listings_cache=False,
    )  # fmt: skip


def random_job(**parameters: Any) -> JobWork:
    """The work of a random-array job of these parameters, planned as the gateway plans it: no size limits, one object per chunk unless shards are given."""
    as_json = {name: list(value) if isinstance(value, tuple) else value for name, value in parameters.items()}
    return plan_work(RandomArray(), as_json, Limits(math.inf, math.inf, math.inf, "none", 3), lambda job_id: None)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until ``condition()`` is truthy and return it; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def listing(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, int]:
    """Every object under ``root`` with its size: compare two to see that nothing was written."""
    return {path: info["size"] for path, info in fs.find(root, detail=True).items()}


def chunk_objects(fs: fsspec.AbstractFileSystem, array_path: str) -> list[str]:
    return [path for path in fs.find(array_path) if not path.rsplit("/", 1)[-1].startswith((".z", "zarr.json"))]


def expected_objects(job: dict[str, Any]) -> int:
    """How many objects a finished job's array holds besides its metadata: one per shard, or one per chunk."""
    unit = job["shards"] or job["chunks"]
    return math.prod(math.ceil(size / step) for size, step in zip(job["shape"], unit, strict=True))


def assert_complete_result(fs: fsspec.AbstractFileSystem, body: dict[str, Any], root_path: str) -> np.ndarray:
    """Check a finished job's stored array as a scientist would read it; return its values."""
    url = body["url"]
    assert body["status"] == "done"
    assert body["shape"] == list(SHAPE) and body["chunks"] == list(CHUNKS) and body["dtype"] == "float32"
    group = zarr.open_group(url, mode="r")
    array = group["data"]
    assert array.shape == SHAPE
    assert array.chunks == CHUNKS
    assert array.dtype == np.float32
    assert array.shards == (tuple(body["shards"]) if body["shards"] else None)
    assert len(chunk_objects(fs, f"{root_path}/{body['job_id']}/data")) == expected_objects(body)
    values = array[:]
    assert values.min() >= 0.0 and values.max() < 1.0
    assert values.std() > 0.2, "values should spread over [0, 1)"
    dataset = xr.open_zarr(url)
    assert dataset["data"].dims == ("y", "x")
    assert dataset["data"].shape == SHAPE
    return values


def assert_made_from_its_seed(url: str, seed: int) -> None:
    """The stored array at ``url`` is complete and, value for value, the one its seed makes."""
    array = zarr.open_group(url, mode="r")["data"]
    expected = np.empty(array.shape, dtype=array.dtype)
    for index, selection in enumerate(chunk_selections(array.shape, array.chunks)):
        expected[selection] = random_chunk(seed, index, selection, str(array.dtype))
    np.testing.assert_array_equal(array[:], expected)


def assert_computed_by_the_app(record: dict[str, Any]) -> None:
    """The stored result of a done job of an app that reads no source is, value for value, what the app computes from the recorded parameters, here."""
    from science_gateway.apps.base import Output
    from science_gateway.apps.registry import load_apps

    app = load_apps().get(record["app"])
    assert app.version == record["app_version"]
    output = Output(tuple(record["shape"]), tuple(record["chunks"]), record["dtype"], tuple(record["shards"]) if record["shards"] else None)
    whole = tuple(slice(0, size) for size in output.shape)
    stored = zarr.open_group(record["url"], mode="r")["data"]
    assert (stored.shape, stored.dtype) == (output.shape, np.dtype(output.dtype))
    np.testing.assert_array_equal(stored[:], app.compute(whole, record["parameters"], output, {}))


def finished_job(fetch: Callable[[], dict[str, Any]], timeout: float, what: str) -> dict[str, Any]:
    """The record ``fetch`` gives once the job has finished (done, failed or cancelled)."""

    def finished() -> dict[str, Any] | None:
        record = fetch()
        return record if record["status"] in ("done", "failed", "cancelled") else None

    return wait_for(finished, timeout, f"{what} to finish")


def installed_package(directory: Path, distribution: str, modules: Mapping[str, str], apps: Mapping[str, str], version: str = "0.1.0") -> Path:
    """A package installed as pip installs one, in ``directory`` (put it on sys.path): its modules, and its
    metadata declaring ``apps`` (name: "module:Class") under the entry-point group science_gateway.apps."""
    for module, source in modules.items():
        (directory / f"{module}.py").write_text(source)
    metadata = directory / f"{distribution.replace('-', '_')}-{version}.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (metadata / "entry_points.txt").write_text("[science_gateway.apps]\n" + "".join(f"{name} = {target}\n" for name, target in apps.items()))
    return directory


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(processes: list[psutil.Process], timeout: float) -> None:
    wait_for(
        lambda: not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
        timeout,
        f"processes {[p.pid for p in processes]} to exit",
    )


def responses_log(base: Path) -> Path:
    """Where the tests keep every HTTP response they receive, for the audit of secrets at the end."""
    return base / "responses.log"


def keep_responses(session: requests.Session, log: Path) -> requests.Session:
    def keep(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        streamed = response.headers.get("Content-Type", "").startswith("text/event-stream")
        with log.open("a", encoding="utf-8") as out:
            # An event stream is read as it arrives, for as long as the test reads it: kept as it is read.
            out.write(f"{response.request.method} {response.url} {response.status_code}\n{'' if streamed else response.text}\n")
        if streamed:
            response.iter_content = _kept_as_read(response.iter_content, log)  # type: ignore[method-assign]

    session.hooks["response"].append(keep)
    return session


def _kept_as_read(iter_content: Callable[..., Iterator[Any]], log: Path) -> Callable[..., Iterator[Any]]:
    def kept(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for chunk in iter_content(*args, **kwargs):
            with log.open("a", encoding="utf-8") as out:
                out.write(chunk if isinstance(chunk, str) else chunk.decode(errors="replace"))
            yield chunk

    return kept


EXAMPLE_NOTEBOOK = Path(__file__).parents[1] / "examples" / "gateway_demo.ipynb"
DEPLOYMENT = Path(__file__).parents[1] / "deploy_gateway.yaml"


def kubelets_probe_timeout() -> int:
    """The seconds the kubelet waits for a probe's answer (deploy_gateway.yaml): a slower answer is a failed probe."""
    manifest = yaml.safe_load_all(DEPLOYMENT.read_text())
    (container,) = next(document for document in manifest if document and document["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    return min(container["livenessProbe"]["timeoutSeconds"], container["readinessProbe"]["timeoutSeconds"])


def run_example_notebook(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run examples/gateway_demo.ipynb top to bottom on a real kernel, which inherits this process's environment; the notebook run."""
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(EXAMPLE_NOTEBOOK, as_version=4)
    # No timings in the cells' metadata: the notebook is committed with a run's outputs.
    NotebookClient(notebook, timeout=300, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def output_kinds(notebook: nbformat.NotebookNode) -> list[set[tuple[str, ...]]]:
    """For each code cell, the kinds of output it shows: type and, for data, MIME types (a progress bar writes a varying number of streams)."""
    return [{(output.output_type, *sorted(output.get("data", {}))) for output in cell.outputs} for cell in code_cells(notebook)]


def run_notebook_on_server(server_url: str, token: str, notebook: Path = EXAMPLE_NOTEBOOK, timeout: float = 300) -> list[nbformat.NotebookNode]:
    """Run a notebook's code cells in a new kernel of a running notebook server, as its user's browser does; its code cells.

    The kernel is started through the server's REST API and fed through its
    websocket (``token`` must grant access to the server), so it runs with that
    server's environment. It stops at the first cell that fails, whose error
    stays in that cell's outputs; the kernel is shut down at the end.
    """
    headers = {"Authorization": f"token {token}"}
    started = requests.post(f"{server_url}/api/kernels", json={"name": "python3"}, headers=headers, timeout=60)
    started.raise_for_status()
    kernel_url = f"{server_url}/api/kernels/{started.json()['id']}"
    cells = [cell for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code"]
    # The committed notebook carries a run's outputs: none of them may pass for this run's.
    for cell in cells:
        cell.outputs, cell.execution_count = [], None
    channels = websocket.create_connection(f"ws{kernel_url.removeprefix('http')}/channels", header=[f"Authorization: token {token}"], timeout=timeout)
    try:
        session = uuid.uuid4().hex
        for count, cell in enumerate(cells, start=1):
            cell.outputs, cell.execution_count = [], count
            if _execute(channels, session, cell, time.monotonic() + timeout) != "ok":
                break
    finally:
        channels.close()
        requests.delete(kernel_url, headers=headers, timeout=60)
    return cells


def _execute(channels: websocket.WebSocket, session: str, cell: nbformat.NotebookNode, deadline: float) -> str:
    """Send one cell to the kernel; collect its outputs into the cell until the kernel is idle; the reply's status."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "session": session, "username": "", "version": "5.3"}
    content = {"code": cell.source, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
    channels.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}))
    status, idle = None, False
    while status is None or not idle:
        if time.monotonic() > deadline:
            raise AssertionError(f"the kernel did not finish the cell in time:\n{cell.source}")
        message = json.loads(channels.recv())
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind = message["header"]["msg_type"]
        if kind == "execute_reply":
            status = message["content"]["status"]
        elif kind == "status":
            idle = message["content"]["execution_state"] == "idle"
        elif kind in ("stream", "display_data", "execute_result", "error"):
            cell.outputs.append(nbformat.v4.output_from_msg(message))
    return status


def outputs(cell: nbformat.NotebookNode) -> str:
    """What a cell printed or showed as text, and its error, if any."""
    return "\n".join(_text(output) for output in cell.outputs)


def _text(output: nbformat.NotebookNode) -> str:
    if output.output_type == "error":
        return f"{output.ename}: {output.evalue}"
    return output.get("text", "") or output.get("data", {}).get("text/plain", "")


@contextmanager
def running_app(environ: Mapping[str, str], ready_within: float | None = None) -> Iterator[Flask]:
    """The service built from these variables, as at start-up; its cluster and runners stopped on the way out.

    With ``ready_within``, it first waits that many seconds for the Dask cluster, and fails with the reason if none came.
    """
    app = create_app(load_settings(environ))
    try:
        if ready_within is not None:
            assert services(app).cluster.wait_until_ready(ready_within), services(app).cluster.status().reason
        yield app
    finally:
        services(app).close()


def manager_on(app: Flask, url: str, metrics: Any = None, **settings_changes: Any) -> Any:
    """A job manager of its own on ``app``'s cluster and apps, with another results store and settings."""
    from dataclasses import replace

    from science_gateway.jobs import JobManager
    from science_gateway.results_store import ResultsStore

    gateway = services(app)
    settings = replace(gateway.settings, results_url=url, **settings_changes)
    return JobManager(gateway.cluster, ResultsStore(url), settings, metrics or gateway.metrics, gateway.apps)


def _pause(dask_worker: Any) -> Any:
    from distributed.core import Status

    # Otherwise the worker's memory monitor resumes a paused worker whose memory is low.
    fraction = dask_worker.memory_manager.memory_pause_fraction
    dask_worker.memory_manager.memory_pause_fraction = False
    dask_worker.status = Status.paused
    return fraction


def _resume(fraction: Any, dask_worker: Any) -> None:
    from distributed.core import Status

    dask_worker.status = Status.running
    dask_worker.memory_manager.memory_pause_fraction = fraction


def pause_workers(client: Any) -> Any:
    """Pause every worker of the cluster (see :func:`workers_held`); what :func:`resume_workers` needs to undo it."""
    return next(iter(client.run(_pause).values()))


def resume_workers(client: Any, paused: Any) -> None:
    client.run(_resume, paused)


@contextmanager
def workers_held(client: Any) -> Iterator[None]:
    """The cluster's workers paused: a job's tasks wait queued until the block ends, however fast the machine.

    A paused worker still answers the scheduler and ``client.run``, so a job's stop reaches it.
    """
    paused = pause_workers(client)
    try:
        yield
    finally:
        resume_workers(client, paused)


def _has_tasks_of(job_id: str, dask_scheduler: Any) -> bool:
    for task in dask_scheduler.tasks.values():
        run_id = getattr(task.run_spec, "kwargs", {}).get("run_id")
        if isinstance(run_id, str) and run_id.startswith(f"{job_id}/"):
            return True
    return False


def wait_for_the_tasks(client: Any, job_id: str) -> None:
    """Until the scheduler has the job's tasks (sent together): held by :func:`workers_held`, the job then runs with
    every task sent and none begun, where a test makes its fault. Its status is ``running`` a moment before."""
    wait_for(lambda: client.run_on_scheduler(_has_tasks_of, job_id), 60, f"the tasks of {job_id} to reach the scheduler")


def _running_tasks(dask_worker: Any) -> int:
    return len(dask_worker.state.executing)


def workers_running_tasks(client: Any) -> list[str]:
    """The addresses of the workers running a task now."""
    return [address for address, running in client.run(_running_tasks).items() if running]


@contextmanager
def helpers_by_value() -> Iterator[None]:
    """These helpers' functions sent to a cluster by value: the workers and scheduler of a gateway under gunicorn or
    Dask Gateway import the project, not the tests."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


SCHEDULER_ADDRESS = "scheduler-address"


def reachable_cluster(directory: Path) -> dict[str, str]:
    """Dask's own setting, for a gateway under gunicorn: its LocalCluster's scheduler (a scheduler preload) writes its
    address into ``directory``, where :func:`gateways_cluster` finds it."""
    preload = directory / "write_scheduler_address.py"
    preload.write_text(
        "def dask_setup(scheduler):\n"
        f"    with open({str(directory / SCHEDULER_ADDRESS)!r}, 'w') as out:\n"
        "        out.write(scheduler.address)\n"
    )
    return {"DASK_DISTRIBUTED__SCHEDULER__PRELOAD": json.dumps([str(preload)])}


@contextmanager
def gateways_cluster(directory: Path) -> Iterator[Any]:
    """A client of the LocalCluster of the gateway started with :func:`reachable_cluster` (``directory``): to hold its workers."""
    from distributed import Client

    written = directory / SCHEDULER_ADDRESS
    address = wait_for(lambda: written.exists() and written.read_text(), 60, "the gateway's scheduler to write its address")
    with helpers_by_value(), Client(address, timeout=30) as client:
        yield client


def stop_reached(job_id: str) -> bool:
    """On a worker: whether a stop of a run of this job has reached it (the job timed out or was cancelled)."""
    from science_gateway import region_writes

    return any(run.startswith(f"{job_id}/") for run in region_writes._stopped_runs)


def wait_for_the_stop(client: Any, job_id: str) -> None:
    """Until the stop of the job's tasks reaches every worker: held by workers_held, the job has then failed or been cancelled."""
    wait_for(lambda: all(client.run(stop_reached, job_id).values()), 60, f"the stop of {job_id} to reach the workers")


def server_sent_events(response: requests.Response) -> Iterator[dict[str, str]]:
    """The events of a ``text/event-stream`` answer (``stream=True``) as they arrive, each its fields (``id``, ``event``,
    ``data``, ``retry``); a comment alone is ``{"comment": ...}``. Ends when the server closes the stream."""
    fields: dict[str, str] = {}
    # chunk_size=None: each line as soon as its bytes arrive, not once a buffer fills.
    for line in response.iter_lines(chunk_size=None, decode_unicode=True):
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            fields["comment"] = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    if fields:
        yield fields
