"""Shared test helpers: waiting on conditions and checking stored results."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import nbformat
import numpy as np
import psutil
import pytest
import requests
import xarray as xr
import zarr
from nbclient import NotebookClient

SHAPE = (1000, 1000)
CHUNKS = (100, 100)


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
    assert len(chunk_objects(fs, f"{root_path}/{body['job_id']}/data")) == 100
    values = array[:]
    assert values.min() >= 0.0 and values.max() < 1.0
    assert values.std() > 0.2, "values should spread over [0, 1)"
    dataset = xr.open_zarr(url)
    assert dataset["data"].dims == ("y", "x")
    assert dataset["data"].shape == SHAPE
    return values


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
        with log.open("a", encoding="utf-8") as out:
            out.write(f"{response.request.method} {response.url} {response.status_code}\n{response.text}\n")

    session.hooks["response"].append(keep)
    return session


EXAMPLE_NOTEBOOK = Path(__file__).parents[1] / "examples" / "gateway_demo.ipynb"


def run_example_notebook(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> list[nbformat.NotebookNode]:
    """Run examples/gateway_demo.ipynb top to bottom on a real kernel, which inherits this process's environment; its code cells."""
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(EXAMPLE_NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def outputs(cell: nbformat.NotebookNode) -> str:
    return "\n".join(output.get("text", "") or output.get("data", {}).get("text/plain", "") for output in cell.outputs)
