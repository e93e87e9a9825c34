"""A quick look at a finished array: a colour-mapped PNG with a colour bar and the job id as title.

A large array is averaged down to at most ``MAX_SIDE`` values a side by the
Dask workers, which read it from object storage; the web process receives
only that small array, never the whole one.
"""

from __future__ import annotations

import io
import math

import dask.array as da
import matplotlib
import numpy as np
from distributed import Client

matplotlib.use("Agg")  # no display in a web process
from matplotlib.figure import Figure  # noqa: E402

MAX_SIDE = 500
# The picture is WIDTH x HEIGHT pixels: a square array with its colour bar beside it.
WIDTH, HEIGHT, DPI = 600, 500, 100


def downsampled(client: Client, array_url: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """The array averaged over blocks so that no side exceeds ``MAX_SIDE``, computed on the cluster; and its full shape."""
    array = da.from_zarr(array_url)
    factors = {axis: max(1, math.ceil(size / MAX_SIDE)) for axis, size in enumerate(array.shape)}
    small = da.coarsen(np.mean, array, factors, trim_excess=True) if any(f > 1 for f in factors.values()) else array
    return client.compute(small).result(), array.shape


def render_png(values: np.ndarray, shape: tuple[int, ...], title: str) -> bytes:
    """The picture; its axes count the rows and columns of the whole array (``shape``), not of ``values``."""
    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis", interpolation="nearest", extent=(0, shape[1], shape[0], 0))
    figure.colorbar(image, ax=axes)
    axes.set_title(title)
    axes.set_xlabel("x")
    axes.set_ylabel("y")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def preview_png(client: Client, array_url: str, title: str) -> bytes:
    values, shape = downsampled(client, array_url)
    return render_png(values, shape, title)
