"""Run a Dask Gateway scheduler or worker command in a container of the product image, as a pod would.

Dask Gateway's local backend starts ``scheduler_cmd`` and ``worker_cmd`` as
processes with the cluster's environment; this command stands in for them:

    python container_process.py IMAGE LABEL dask worker ...

It replaces itself with ``docker run`` (the backend's signals reach the
container through the client), passes the cluster's variables by name only,
so their values never appear in a command line, and mounts the cluster's TLS
files where the Kubernetes backend mounts its Secret. The container runs as the
gateway's pod does: read-only root, its own unprivileged user, no capabilities.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

# What the local backend hands every process from its own environment, and what
# a shell adds: the host's, not the cluster's, and meaningless in the image.
HOST_VARIABLES = {"PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_ROOT", "CONDA_DEFAULT_ENV", "LANG", "LC_ALL", "USER", "HOME", "PWD", "SHLVL", "_"}
TLS_VARIABLES = ("CA_FILE", "SCHEDULER__KEY", "SCHEDULER__CERT", "WORKER__KEY", "WORKER__CERT")
CREDENTIALS = "/etc/dask-credentials"
IMAGE_USER = 10001


def docker_run_command(image: str, label: str, command: list[str], environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The ``docker run`` command line and the environment its client needs."""
    passed = {name: value for name, value in environ.items() if name not in HOST_VARIABLES}
    mounts = []
    for suffix in TLS_VARIABLES:
        name = f"DASK_DISTRIBUTED__COMM__TLS__{suffix}"
        if name in passed:
            # The backend writes the files for its own user; the image's user reads a copy.
            host_copy = Path(f"{passed[name]}.{IMAGE_USER}")
            shutil.copyfile(passed[name], host_copy)
            os.chown(host_copy, IMAGE_USER, IMAGE_USER)
            host_copy.chmod(0o400)
            inside = f"{CREDENTIALS}/{suffix.lower()}"
            mounts += ["--volume", f"{host_copy}:{inside}:ro"]
            passed[name] = inside
    argv = [
        "docker", "run", "--rm", "--name", f"{label}-{uuid.uuid4().hex[:8]}", "--label", label,
        "--network", "host", "--read-only", "--tmpfs", "/tmp", "--user", f"{IMAGE_USER}:{IMAGE_USER}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *mounts,
        *(item for name in sorted(passed) for item in ("--env", name)),
        image, *command,
    ]  # fmt: skip
    return argv, {**passed, "PATH": environ.get("PATH", os.defpath)}


def main() -> None:
    image, label, *command = sys.argv[1:]
    argv, environ = docker_run_command(image, label, command, dict(os.environ))
    os.execvpe(argv[0], argv, environ)


if __name__ == "__main__":
    main()
