"""A Docker engine for the image's tests and ``make image``: installed, started and fed without a registry.

No image registry is reachable here, so the Dockerfile's base image is made from
Debian's own packages (debootstrap), trimmed as Debian's official slim image
is, and imported under the official name: the same Dockerfile then builds here
and on an ordinary machine. pip inside the build cannot verify this machine's
package proxy; the wheels are downloaded on the host instead and served to the
build as a package index on loopback (the Dockerfile's ``PIP_INDEX_URL``).
"""

from __future__ import annotations

import functools
import html
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from devtools.processes import start_process, stop_process

PROJECT = Path(__file__).resolve().parents[1]
DEBIAN_BASE_IMAGE = "debian:bookworm-slim"
DEBIAN_SUITE = "bookworm"
# The tests' timeout covers their own code, not a fixture's set-up: each step here has a bound of its own.
APT_TIMEOUT = 900
# No bridge and no iptables: containers share the host's network (--network host) and get no private-range address.
DOCKERD_FLAGS = ["--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"]
# What debuerreotype's "slim" variant keeps out of the official image, and the apt settings it ships.
_SLIM_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
"""
_SLIM_APT_CONFIG = {
    "docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
}


class EngineUnavailable(RuntimeError):
    """No Docker engine runs here and none could be installed or started; the message says why."""


def docker(*args: str, input: bytes | None = None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """The Docker client; a failure raises with what it printed."""
    done = subprocess.run(["docker", *args], input=input, capture_output=True, timeout=timeout)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done


def engine_answers() -> bool:
    try:
        return docker("info", timeout=30, check=False).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@contextmanager
def running_engine(log_file: Path, timeout: float = 60) -> Iterator[None]:
    """A Docker engine for the duration: the one that runs, or dockerd started here (and stopped after).

    Debian's engine is installed first when there is none; that needs root and apt-get.
    """
    if engine_answers():
        yield
        return
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        _install_engine()
    process = start_process(["dockerd", *DOCKERD_FLAGS], log_file=log_file)
    try:
        deadline = time.monotonic() + timeout
        while not engine_answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise EngineUnavailable(f"dockerd did not start: {_tail(log_file)}")
            time.sleep(0.5)
        yield
    finally:
        stop_process(process, timeout=60)


def _install_engine() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailable("no Docker engine here, and installing Debian's (docker.io) needs root and apt-get")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "docker.io", "debootstrap"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=APT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise EngineUnavailable(f"{' '.join(command)} did not finish within {APT_TIMEOUT} s") from exc
        if done.returncode != 0:
            raise EngineUnavailable(f"{' '.join(command)} failed: {done.stderr[-2000:]}")


def _tail(log_file: Path, characters: int = 2000) -> str:
    return log_file.read_text(errors="replace")[-characters:] if log_file.exists() else "(no log)"


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        text = source.read_text() if source.is_file() else ""
        found = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, flags=re.MULTILINE) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text, flags=re.MULTILINE
        )
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def ensure_debian_base(workdir: Path, name: str = DEBIAN_BASE_IMAGE) -> bool:
    """Make ``name`` from Debian's packages unless the engine has it; True when it was made here."""
    if docker("image", "inspect", name, check=False).returncode == 0:
        return False
    if shutil.which("debootstrap") is None:
        raise EngineUnavailable(f"{name} is not in the engine and debootstrap, which makes it, is not installed")
    root = workdir / "debian-rootfs"
    mirror = debian_mirror()
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), mirror], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise EngineUnavailable(f"debootstrap from {mirror} failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    _trim_as_slim(root, mirror)
    with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
        imported = subprocess.run(["docker", "import", "-", name], stdin=tar.stdout, capture_output=True, timeout=600)
    if imported.returncode != 0:
        raise EngineUnavailable(f"docker import failed: {imported.stderr.decode(errors='replace')}")
    shutil.rmtree(root, ignore_errors=True)
    return True


def _trim_as_slim(root: Path, mirror: str) -> None:
    """What the official slim image leaves out, and its apt sources (with security updates)."""
    (root / "etc/dpkg/dpkg.cfg.d/docker").write_text(_SLIM_DPKG_EXCLUDES)
    for name, text in _SLIM_APT_CONFIG.items():
        (root / "etc/apt/apt.conf.d" / name).write_text(text)
    for folder in ("usr/share/groff", "usr/share/info", "usr/share/linda", "usr/share/lintian/overrides", "usr/share/locale", "usr/share/man"):
        shutil.rmtree(root / folder, ignore_errors=True)
    for path in (root / "usr/share/doc").glob("*/*"):
        if path.name == "copyright":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for folder in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
        for path in (root / folder).glob("**/*"):
            if path.is_file():
                path.unlink()
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    security = mirror.removesuffix("/debian") + "/debian-security" if mirror.endswith("/debian") else mirror
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {DEBIAN_SUITE} {DEBIAN_SUITE}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {DEBIAN_SUITE}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


@contextmanager
def served_wheelhouse(requirements: Path, workdir: Path, *more: str) -> Iterator[str]:
    """The wheels of the requirements and of ``more`` (such as setuptools, to build a package), downloaded with the
    host's pip settings, as a package index on loopback.

    pip treats loopback as a secure origin, so plain HTTP serves.
    """
    wheels = workdir / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-r", str(requirements), *more, "-d", str(wheels)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pip download failed: {done.stderr[-3000:]}")
    index = workdir / "index"
    _write_simple_index(sorted(wheels.glob("*.whl")), index)
    handler = functools.partial(_QuietHandler, directory=str(index))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/simple/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _write_simple_index(wheels: Sequence[Path], index: Path) -> None:
    """PEP 503: one page per project listing its files, which sit beside the pages."""
    files = index / "files"
    files.mkdir(parents=True)
    projects: dict[str, list[str]] = {}
    for wheel in wheels:
        shutil.copy(wheel, files / wheel.name)
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        projects.setdefault(project, []).append(wheel.name)
    for project, names in projects.items():
        page = index / "simple" / project / "index.html"
        page.parent.mkdir(parents=True)
        links = "".join(f'<a href="../../files/{html.escape(name)}">{html.escape(name)}</a>\n' for name in names)
        page.write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")


def build_image(image: str, index_url: str, log_file: Path, app_packages: str = "") -> float:
    """``make image`` with the build on the host's network and the given package index, and ``app_packages``
    as GATEWAY_APP_PACKAGES (directories of the project, or packages of the index); the seconds it took."""
    flags = f"--network host --build-arg PIP_INDEX_URL={index_url} --build-arg GATEWAY_APP_PACKAGES={app_packages}"
    started = time.monotonic()
    with log_file.open("ab") as log:
        done = subprocess.run(
            ["make", "--no-print-directory", "image", f"IMAGE={image}", f"DOCKER_BUILD_FLAGS={flags}"],
            cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT, timeout=1800,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"make image failed: {_tail(log_file, 4000)}")
    return time.monotonic() - started


def image_megabytes(image: str) -> float:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6
