"""examples/gateway_demo.ipynb, run top to bottom on a real Jupyter kernel against a gateway and S3 server of the test's."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BUCKET, serve_for_module
from devtools.gunicorn_gateway import RunningGateway
from devtools.local_s3 import LocalS3
from helpers import outputs, run_example_notebook


@pytest.fixture(scope="module")
def notebook_gateway(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from serve_for_module(tmp_path_factory, "notebook", f"s3://{BUCKET}")


def test_the_notebook_runs_and_plots_the_result(notebook_gateway: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits this environment, as a notebook server's kernels inherit theirs: AWS_* from the s3 fixture.
    monkeypatch.setenv("GATEWAY_URL", notebook_gateway.url)

    _, submitted, watched, opened_with_xarray, opened_with_zarr, plotted = run_example_notebook(tmp_path, monkeypatch)

    assert "'queued'" in outputs(submitted) or "'running'" in outputs(submitted)
    assert "'done'" in outputs(watched), outputs(watched)
    assert "(y: 1000, x: 1000)" in outputs(opened_with_xarray) and "float32" in outputs(opened_with_xarray)
    assert "(1000, 1000) float32" in outputs(opened_with_zarr)
    images = [output for output in plotted.outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1, "the plot cell shows one image"
