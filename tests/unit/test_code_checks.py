"""The code passes its own checks (pyproject.toml): ruff's lint over everything, mypy over the service, the benchmark and the dev servers."""

import subprocess
import sys

from servers import PROJECT

TOOLS = PROJECT / ".venv-tools" / "bin"


def run_tool(name: str, *arguments: str) -> subprocess.CompletedProcess:
    executable = TOOLS / name
    assert executable.exists(), f"{executable} is missing: `make test` installs the checkers into .venv-tools"
    return subprocess.run([str(executable), *arguments], cwd=PROJECT, capture_output=True, text=True, timeout=300)


def test_ruff() -> None:
    done = run_tool("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_with_the_services_dependencies() -> None:
    # The service's venv, not the tools': that is where the libraries' types are.
    done = run_tool("mypy", "--python-executable", sys.executable, "--cache-dir", "/dev/null")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues found in" in done.stdout
