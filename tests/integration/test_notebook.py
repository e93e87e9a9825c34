"""examples/gateway_demo.ipynb, run top to bottom on a real Jupyter kernel against a gateway and S3 server of the test's."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3
from helpers import EXAMPLE_NOTEBOOK, code_cells, output_kinds, outputs, run_example_notebook


@pytest.fixture(scope="module")
def notebook_gateway(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from serve_for_module(tmp_path_factory, "notebook", f"s3://{BUCKET}/notebook")


def test_the_notebook_runs_and_plots_the_result_with_no_storage_key(
    notebook_gateway: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits this environment, as a notebook server's kernels inherit theirs: it reads through the gateway alone.
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_URL", notebook_gateway.url)

    notebook = run_example_notebook(tmp_path, monkeypatch)
    _, submitted, watched, opened_with_xarray, opened_with_zarr, plotted = code_cells(notebook)

    # The record the POST answered with, as the job was queued.
    assert "'queued'" in outputs(submitted), outputs(submitted)
    # The client's bar, a widget in a notebook, and the record once done.
    assert [output for output in watched.outputs if "application/vnd.jupyter.widget-view+json" in output.get("data", {})], watched.outputs
    assert "'done', {'chunks_written': 100, 'chunks_total': 100}" in outputs(watched), outputs(watched)
    assert "(y: 1000, x: 1000)" in outputs(opened_with_xarray) and "float32" in outputs(opened_with_xarray)
    assert "(1000, 1000) float32" in outputs(opened_with_zarr)
    images = [output for output in plotted.outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1, "the plot cell shows one image"


def test_the_committed_notebook_shows_what_a_run_of_its_code_shows(notebook_gateway: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository page shows the notebook with its outputs, the plot among them; they must be a run of the code as it stands.

    When they are not (a cell changed, or its outputs were cleared), this test saves this run's
    notebook in their place and fails: commit the refreshed examples/gateway_demo.ipynb.
    """
    monkeypatch.setenv("GATEWAY_URL", notebook_gateway.url)
    committed = nbformat.read(EXAMPLE_NOTEBOOK, as_version=4)
    fresh = run_example_notebook(tmp_path, monkeypatch)
    plotted = code_cells(committed)[-1]
    if output_kinds(committed) != output_kinds(fresh) or not any("image/png" in output.get("data", {}) for output in plotted.outputs):
        nbformat.write(fresh, EXAMPLE_NOTEBOOK)
        pytest.fail(f"{EXAMPLE_NOTEBOOK.name}'s outputs were not a run of its code: this run's are saved in it now; commit it")
    text = EXAMPLE_NOTEBOOK.read_text()
    assert not [path for path in (str(tmp_path), str(EXAMPLE_NOTEBOOK.parents[1]), sys.prefix) if path in text], "no path of the machine that ran it"
