"""The Dockerfile built by a real Docker engine, and the image run as the pod runs it.

The engine is Debian's, installed and started here when none runs (and
stopped after); the base image is made from Debian's packages, as no registry
is reachable. The stage fails, never skips, when the engine cannot run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from artifacts import manifests
from conftest import BUCKET, MEASUREMENTS
from devtools.container_engine import (
    EngineUnavailable,
    build_image,
    docker,
    ensure_debian_base,
    image_megabytes,
    running_engine,
    served_wheelhouse,
)  # fmt: skip
from devtools.local_s3 import LocalS3
from devtools.processes import free_port, stop_process
from helpers import assert_computed_by_the_app, assert_made_from_its_seed, finished_job, new_secret, wait_for
from servers import PROJECT, DaskGatewayServer, start_dask_gateway_server

IMAGE = "science-gateway:test"
# Built in with the build argument GATEWAY_APP_PACKAGES, as docs/apps.md says.
EXAMPLE_APP = "examples/apps/julia-set"
# As deploy_gateway.yaml runs the container.
POD_SECURITY = ["--read-only", "--tmpfs", "/tmp", "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
RESULTS_WRITER = "scientist"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    try:
        with running_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log"):
            yield
    except EngineUnavailable as reason:
        pytest.fail(f"the image cannot be built and run here: {reason}")


@pytest.fixture(scope="module")
def image(engine: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    workdir = tmp_path_factory.mktemp("image")
    try:
        started = time.monotonic()
        made = ensure_debian_base(workdir)
        base_seconds = time.monotonic() - started
        # setuptools: the example app's build backend, to install it from its directory as an operator does.
        with served_wheelhouse(PROJECT / "requirements.txt", workdir, "setuptools") as index_url:
            build_seconds = build_image(IMAGE, index_url, workdir / "build.log", app_packages=f"./{EXAMPLE_APP}")
    except EngineUnavailable as reason:
        pytest.fail(f"the image cannot be built here: {reason}")
    base = f"base made from Debian's packages in {base_seconds:.0f} s" if made else "base already in the engine"
    request.config.stash[MEASUREMENTS].append(f"image: built in {build_seconds:.0f} s ({base}), {image_megabytes(IMAGE):.0f} MB")
    return IMAGE


def pod_environment(s3: LocalS3, results_prefix: str) -> dict[str, str]:
    """The Deployment's plain values that apply without a hub or Dask Gateway, and the awsconfig Secret's variables.

    Its results go under ``results_prefix`` of the Deployment's bucket, the test's own place in the tests' S3 server.
    """
    (container,) = manifests().deployment.spec.template.spec.containers
    plain = {item.name: item.value for item in container.env if item.value is not None}
    dask_gateways = ("DASK_GATEWAY__", "GATEWAY_CLUSTER_OPTIONS")
    applies = {name: value for name, value in plain.items() if not name.startswith((*dask_gateways, "JUPYTERHUB_", "GATEWAY_AUTH"))}
    return {**applies, "GATEWAY_RESULTS_URL": f"{applies['GATEWAY_RESULTS_URL']}/{results_prefix}", **s3.environ()}


class Container:
    """A container started detached; its variables are passed by name, so their values stay out of command lines."""

    def __init__(self, image: str, environ: dict[str, str], log_file: Path, *flags: str) -> None:
        self.name = f"gateway-test-{uuid.uuid4().hex[:8]}"
        self.log_file = log_file
        variables = [item for name in sorted(environ) for item in ("--env", name)]
        subprocess.run(
            ["docker", "run", "--detach", "--name", self.name, "--network", "host", *POD_SECURITY, *flags, *variables, image],
            env={**os.environ, **environ}, check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        done = docker("logs", self.name, check=False)
        return (done.stdout + done.stderr).decode(errors="replace")

    def remove(self) -> None:
        # Kept for the secrets audit at the end of the session.
        self.log_file.write_text(self.logs())
        docker("rm", "--force", self.name, check=False)


def wait_until_ready(url: str, container: Container, timeout: float) -> None:
    def ready() -> bool:
        if not container.state()["Running"]:
            pytest.fail(f"the container stopped: {container.logs()[-3000:]}")
        try:
            # Every dependency ready: the cluster up and the records read, not only the process serving.
            return requests.get(f"{url}/readyz", timeout=5).json()["status"] == "ready"
        except (requests.RequestException, ValueError):
            return False

    wait_for(ready, timeout=timeout, what=f"{url}/readyz", interval=0.2)


def test_the_container_runs_as_the_pod_does(image: str, s3: LocalS3, tmp_path: Path, measured) -> None:
    port, probe_port = free_port(), free_port()
    environ = {
        **pod_environment(s3, "image-as-the-pod"),
        # gunicorn's own variable: the pod's port 8000 may be taken on this host.
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}",
        "GATEWAY_PROBE_ADDRESS": f"127.0.0.1:{probe_port}",
    }
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    container = Container(image, environ, tmp_path / "container.log")
    try:
        wait_until_ready(url, container, timeout=180)
        cold_start = time.monotonic() - started
        assert requests.get(f"http://127.0.0.1:{probe_port}/readyz", timeout=5).status_code == 200

        job = requests.get(f"{url}/submit_job/from-the-image?seed=17", timeout=300)
        assert job.status_code == 200, job.text
        assert job.json()["status"] == "done" and job.json()["url"] == f"s3://{BUCKET}/image-as-the-pod/from-the-image"
        assert_made_from_its_seed(job.json()["url"], 17)
        picture = requests.get(f"{url}/jobs/from-the-image/preview.png", timeout=120)
        assert picture.status_code == 200, picture.text
        assert picture.headers["Content-Type"] == "image/png" and picture.content.startswith(b"\x89PNG\r\n\x1a\n")

        # Docker runs the image's HEALTHCHECK every 30 s; the first one decides.
        health = wait_for(lambda: container.state()["Health"]["Status"] != "starting" and container.state()["Health"], 120, "a health check")
        assert health["Status"] == "healthy", health["Log"]

        stopping = time.monotonic()
        docker("kill", "--signal", "TERM", container.name)
        exit_code = int(docker("wait", container.name, timeout=720).stdout)
        stopped_in = time.monotonic() - stopping
        assert exit_code == 0, container.logs()[-3000:]
        # A timing that must be asserted: past terminationGracePeriodSeconds the kubelet sends SIGKILL, and running jobs die.
        assert stopped_in < manifests().deployment.spec.template.spec.termination_grace_period_seconds
        logs = container.logs()
        for trouble in ("Read-only file system", "Permission denied", "Traceback", "is not a writable directory"):
            assert trouble not in logs, logs[-3000:]
    finally:
        container.remove()
    measured(f"container: ready {cold_start:.1f} s after docker run (cold start), stopped {stopped_in:.1f} s after SIGTERM with exit code 0")


@pytest.fixture
def containers_dask_gateway(image: str, s3: LocalS3, tmp_path: Path) -> Iterator[DaskGatewayServer]:
    password = new_secret()
    server = start_dask_gateway_server(
        tmp_path, {"gateway-results-workers": s3.environ()}, password=password, results_writer=RESULTS_WRITER, container_image=image
    )
    try:
        yield server
    finally:
        stop_process(server.process, timeout=120)
        # Whatever the server did not stop (a SIGKILLed server leaves its clusters).
        left = docker("ps", "--all", "--quiet", "--filter", f"label={server.container_label}").stdout.split()
        if left:
            docker("rm", "--force", *[name.decode() for name in left], check=False)


def test_dask_gateway_runs_the_scheduler_and_workers_from_the_image(
    image: str, containers_dask_gateway: DaskGatewayServer, s3: LocalS3, tmp_path: Path, measured
) -> None:
    server = containers_dask_gateway
    port, probe_port = free_port(), free_port()
    environ = {
        **pod_environment(s3, "image-with-dask-gateway"),
        "DASK_GATEWAY__ADDRESS": server.address,
        "DASK_GATEWAY__PROXY_ADDRESS": server.proxy_address,
        "DASK_GATEWAY__AUTH__TYPE": "basic",
        "DASK_GATEWAY__AUTH__KWARGS__USERNAME": RESULTS_WRITER,
        "DASK_GATEWAY__AUTH__KWARGS__PASSWORD": server.password,
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}",
        "GATEWAY_PROBE_ADDRESS": f"127.0.0.1:{probe_port}",
    }
    url = f"http://127.0.0.1:{port}"
    container = Container(image, environ, tmp_path / "gateway-container.log")
    try:
        wait_until_ready(url, container, timeout=300)

        def whole_cluster() -> list[bytes]:
            running = docker("ps", "--quiet", "--filter", f"label={server.container_label}").stdout.split()
            return running if len(running) == 4 else []

        cluster = wait_for(whole_cluster, timeout=120, what="a scheduler and 3 workers, each a container of the image")
        job = requests.get(f"{url}/submit_job/from-image-workers?seed=23", timeout=300)
        assert job.status_code == 200, job.text
        assert_made_from_its_seed(job.json()["url"], 23)
        # The example app, installed into the image by the build argument, run by the workers' containers.
        assert "julia-set" in [app["name"] for app in requests.get(f"{url}/apps", timeout=10).json()["apps"]]
        julia = requests.post(f"{url}/jobs", json={"app": "julia-set", "job_id": "julia-in-containers", "parameters": {"size": [300, 200]}}, timeout=10)
        assert julia.status_code == 202, julia.text
        done = finished_job(lambda: requests.get(f"{url}/jobs/julia-in-containers", timeout=10).json(), 120, "the julia-set job")
        assert done["status"] == "done", done["error"]
        assert_computed_by_the_app(done)
        configs = [json.loads(docker("inspect", "--format", "{{json .}}", name.decode()).stdout) for name in cluster]
    finally:
        container.remove()
    secret_key = s3.environ()["AWS_SECRET_ACCESS_KEY"]
    workers = [config for config in configs if "worker" in config["Config"]["Cmd"]]
    assert len(workers) == 3 and all(config["Config"]["Image"] == image for config in configs)
    for config in configs:
        assert secret_key not in " ".join([config["Path"], *config["Args"]]), "secrets reach containers by environment, never by argument"
        assert config["HostConfig"]["ReadonlyRootfs"] and config["Config"]["User"] == "10001:10001"
    # The options handler gave the results writer's workers the write Secret, and the scheduler nothing.
    assert all(f"AWS_SECRET_ACCESS_KEY={secret_key}" in config["Config"]["Env"] for config in workers)
    scheduler = next(config for config in configs if "scheduler" in config["Config"]["Cmd"])
    assert not any(re.match(r"AWS_|JUPYTERHUB_API_TOKEN", variable) for variable in scheduler["Config"]["Env"])
    measured(f"Dask Gateway with the image: a scheduler and 3 workers in containers of {image} ran a job")
