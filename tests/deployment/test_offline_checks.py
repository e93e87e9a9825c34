"""The image and Kubernetes artifacts pass the ecosystem's own linters, offline."""

import subprocess

import pytest

from servers import PROJECT

TOOLS = PROJECT / ".venv-tools" / "bin"
YAML_FILES = ["deploy_gateway.yaml", "dask_gateway_config.yaml", "jupyterhub_values.yaml", ".checkov.yaml", ".yamllint"]
# A current Kubernetes release that kubernetes-validate knows.
KUBERNETES_VERSION = "1.34"


def run_tool(name: str, *arguments: str) -> subprocess.CompletedProcess:
    executable = TOOLS / name
    assert executable.exists(), f"{executable} is missing: `make test` installs the checkers into .venv-tools"
    return subprocess.run([str(executable), *arguments], cwd=PROJECT, capture_output=True, text=True, timeout=300)


def test_yamllint() -> None:
    done = run_tool("yamllint", "--strict", "--config-file", ".yamllint", *YAML_FILES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_validate_strict() -> None:
    done = run_tool("kubernetes-validate", "--strict", "--kubernetes-version", KUBERNETES_VERSION, "deploy_gateway.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deployment/gateway" in done.stdout + done.stderr and "service/gateway-svc" in done.stdout + done.stderr


def test_hadolint() -> None:
    done = run_tool("hadolint", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_checkov_with_every_skip_explained() -> None:
    done = run_tool("checkov", "--skip-download", "--config-file", ".checkov.yaml", "-f", "Dockerfile", "-f", "deploy_gateway.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Failed checks: 0" in done.stdout
    lines = (PROJECT / ".checkov.yaml").read_text().splitlines()
    skips = [index for index, line in enumerate(lines) if line.strip().startswith("- CKV")]
    assert skips, "the config lists its skipped checks"
    for index in skips:
        assert lines[index - 1].strip().startswith("# "), f"{lines[index].strip()} needs a one-line reason above it"


# Folders with their slash: git matches a folder pattern to a path that need not exist yet.
@pytest.mark.parametrize("path", ["my_aws_config", "my_aws_workers_config", "my_aws_reader_config", ".venv/", ".venv-tools/", ".data/"])
def test_secrets_and_local_state_stay_out_of_git_and_the_image(path: str) -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=PROJECT)
    assert ignored.returncode == 0, f"{path} should be git-ignored"
    dockerignore = (PROJECT / ".dockerignore").read_text().splitlines()
    assert "*" in dockerignore, "the build context admits only what is listed"
    assert f"!{path.rstrip('/')}" not in dockerignore
