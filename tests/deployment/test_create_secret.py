"""create_secret.sh --dry-run on good and bad files: exit codes, messages, and no secret shown."""

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dask_gateway_server.models import User

from artifacts import options_handler, readers_opt_in_values
from servers import PROJECT

VALUES = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY123456",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t/Value+With=Signs",
    "AWS_ENDPOINT_URL": "https://s3.example.org",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


def write_config(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def create_secret(*arguments: str, cwd: Path = PROJECT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PROJECT / "create_secret.sh"), *arguments], capture_output=True, text=True, cwd=cwd, timeout=60)


def assert_no_secret_shown(done: subprocess.CompletedProcess) -> None:
    shown = done.stdout + done.stderr
    for value in VALUES.values():
        assert value not in shown
        assert base64.b64encode(value.encode()).decode() not in shown


def test_a_good_file_gives_the_secret_with_every_value_redacted(tmp_path: Path) -> None:
    config = write_config(tmp_path / "my_aws_config", ["# comment", "", *(f"{key}={value}" for key, value in VALUES.items())])
    done = create_secret("--dry-run", "-n", "science", str(config))
    assert done.returncode == 0, done.stderr
    assert "kind: Secret" in done.stdout and "name: awsconfig" in done.stdout and "namespace: science" in done.stdout
    for key in VALUES:
        assert f"  {key}: <redacted>" in done.stdout
    assert_no_secret_shown(done)


def test_the_readers_secret_is_the_one_the_documented_opt_in_gives_notebooks(tmp_path: Path) -> None:
    config = write_config(tmp_path / "my_aws_reader_config", [f"{key}={value}" for key, value in VALUES.items()])
    done = create_secret("--readers", "--dry-run", str(config))
    assert done.returncode == 0, done.stderr
    assert "name: gateway-results-reader" in done.stdout and "name: awsconfig" not in done.stdout
    referenced = {
        entry["valueFrom"]["secretKeyRef"]["name"]
        for entry in readers_opt_in_values()["singleuser"]["extraEnv"].values()
        if isinstance(entry, dict) and "secretKeyRef" in entry.get("valueFrom", {})
    }
    assert referenced == {"gateway-results-reader"}
    assert_no_secret_shown(done)


def test_the_workers_secret_is_the_one_dask_gateway_mounts_into_the_gateways_workers_alone(tmp_path: Path) -> None:
    config = write_config(tmp_path / "my_aws_workers_config", [f"{key}={value}" for key, value in VALUES.items()])
    done = create_secret("--workers", "--dry-run", str(config))
    assert done.returncode == 0, done.stderr
    assert "name: gateway-results-workers" in done.stdout and "name: awsconfig" not in done.stdout
    worker = options_handler()({}, User("service:science-gateway"))["worker_extra_container_config"]
    assert worker["envFrom"] == [{"secretRef": {"name": "gateway-results-workers"}}]
    assert_no_secret_shown(done)
    elsewhere = tmp_path / "only-the-gateways-file"
    elsewhere.mkdir()
    (elsewhere / "my_aws_config").write_text("AWS_ACCESS_KEY_ID=AKIAEXAMPLEKEY123456\n")
    done = create_secret("--workers", "--dry-run", cwd=elsewhere)
    assert done.returncode == 1 and "'my_aws_workers_config' not found" in done.stderr, "its file is its own"


def test_one_secret_at_a_time() -> None:
    done = create_secret("--workers", "--readers", "--dry-run")
    assert done.returncode == 2 and "usage:" in done.stderr


def test_the_readers_file_is_its_own(tmp_path: Path) -> None:
    (tmp_path / "my_aws_config").write_text("AWS_ACCESS_KEY_ID=AKIAEXAMPLEKEY123456\n")
    done = create_secret("--readers", "--dry-run", cwd=tmp_path)
    assert done.returncode == 1 and "'my_aws_reader_config' not found" in done.stderr


def test_optional_keys_may_be_left_out(tmp_path: Path) -> None:
    required = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    config = write_config(tmp_path / "config", [f"{key}={VALUES[key]}" for key in required] + ["AWS_DEFAULT_REGION="])
    done = create_secret("--dry-run", str(config))
    assert done.returncode == 0, done.stderr
    assert "AWS_ENDPOINT_URL" not in done.stdout and "AWS_DEFAULT_REGION" not in done.stdout
    assert_no_secret_shown(done)


def lines_without(key: str) -> list[str]:
    return [f"{name}={value}" for name, value in VALUES.items() if name != key]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (lines_without("AWS_SECRET_ACCESS_KEY"), "AWS_SECRET_ACCESS_KEY is missing"),
        (lines_without("AWS_ACCESS_KEY_ID"), "AWS_ACCESS_KEY_ID is missing"),
        (lines_without("AWS_ACCESS_KEY_ID") + ["AWS_ACCESS_KEY_ID="], "AWS_ACCESS_KEY_ID is empty"),
        (lines_without("") + [f"this line has {VALUES['AWS_SECRET_ACCESS_KEY']} but no equals sign"], "is not KEY=VALUE"),
        (lines_without("") + ["AWS_SESSION_TOKEN=abc"], "unknown key AWS_SESSION_TOKEN"),
        (lines_without("") + ["jhub_token=0123456789abcdef"], "unknown key jhub_token"),
        (lines_without("") + [f"AWS_SECRET_ACCESS_KEY={VALUES['AWS_SECRET_ACCESS_KEY']}"], "AWS_SECRET_ACCESS_KEY is given twice"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key_not_the_value(tmp_path: Path, lines: list[str], message: str) -> None:
    done = create_secret("--dry-run", str(write_config(tmp_path / "config", lines)))
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stdout == ""
    assert_no_secret_shown(done)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    done = create_secret("--dry-run", str(tmp_path / "absent"))
    assert done.returncode == 1
    assert "not found" in done.stderr and "my_aws_config.example" in done.stderr


def test_bad_arguments_print_the_usage() -> None:
    done = create_secret("--namespace")
    assert done.returncode == 2 and "usage:" in done.stderr


# kubectl as the script finds it on PATH: each call recorded; `create secret ... --dry-run=client` (offline) is
# the real kubectl's; `get` answers whether the Secret exists, as a cluster would; a write keeps the object sent.
RECORDING_KUBECTL = """#!/usr/bin/env bash
set -eu
printf '%s\\n' "$*" >>"$RECORD/calls"
case "$*" in
    *--dry-run=client*) exec "$REAL_KUBECTL" "$@" ;;
    get\\ *) if [ -n "$EXISTING" ]; then echo "secret/$EXISTING"; fi ;;
    *) cat >"$RECORD/sent.yaml" ;;
esac
"""


def run_against_recording_kubectl(tmp_path: Path, existing: str) -> tuple[list[str], dict]:
    """The script, not dry-run, with kubectl recording what it is asked; its calls and the object it sent."""
    config = write_config(tmp_path / "my_aws_config", [f"{key}={value}" for key, value in VALUES.items()])
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "kubectl").write_text(RECORDING_KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)
    real_kubectl = shutil.which("kubectl")
    assert real_kubectl, "kubectl, as the dry runs above use it"
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "REAL_KUBECTL": real_kubectl, "EXISTING": existing}
    done = subprocess.run(["bash", str(PROJECT / "create_secret.sh"), "-n", "science", str(config)], capture_output=True, text=True, env=environ, timeout=60)
    assert done.returncode == 0, done.stderr
    assert_no_secret_shown(done)
    return (record / "calls").read_text().splitlines(), yaml.safe_load((record / "sent.yaml").read_text())


@pytest.mark.parametrize(("existing", "verb"), [("", "create"), ("awsconfig", "replace")])
def test_the_secret_is_created_or_replaced_whole_and_no_copy_of_its_values_is_kept_in_an_annotation(tmp_path: Path, existing: str, verb: str) -> None:
    """kubectl's client-side apply would keep the whole Secret, values and all, in its last-applied-configuration
    annotation, which `kubectl describe` shows; create and replace keep none, and a replace drops one an apply left."""
    calls, sent = run_against_recording_kubectl(tmp_path, existing)

    writes = [call for call in calls if "--dry-run=client" not in call and not call.startswith("get ")]
    assert writes == [f"{verb} --namespace science -f -"]
    assert sent["kind"] == "Secret" and sent["metadata"]["name"] == "awsconfig"
    assert "annotations" not in sent["metadata"]
    assert {key: base64.b64decode(value).decode() for key, value in sent["data"].items()} == VALUES
    assert not any(value in call for call in calls for value in VALUES.values() if value != VALUES["AWS_ENDPOINT_URL"]), "no value on a command line"
