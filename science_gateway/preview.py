"""A quick look at a finished array: a colour-mapped PNG with a colour bar and the job id as title, or a thumbnail.

A large array is averaged down to at most ``MAX_SIDE`` (a thumbnail:
``THUMBNAIL_SIDE``) values a side by the Dask workers, which read it from object storage; the web process receives
only that small array, never the whole one.
"""

from __future__ import annotations

import io
import math

import dask.array as da
import matplotlib
import matplotlib.image
import numpy as np
import zarr
from distributed import Client

from .region_writes import MAX_TASK_BYTES

matplotlib.use("Agg")  # no display in a web process
from matplotlib.figure import Figure

MAX_SIDE = 500
# One value a pixel, small enough for a page that shows fifty at once (27 kB each for random values).
THUMBNAIL_SIDE = 96
# The picture is WIDTH x HEIGHT pixels: a square array with its colour bar beside it.
WIDTH, HEIGHT, DPI = 600, 500, 100


def read_bands(array_url: str, min_tasks: int) -> da.Array:
    """The stored array as a Dask array of bands of whole chunk rows, at least ``min_tasks`` of them when it has as many.

    A task per zarr chunk costs Dask more than the read itself: 900 chunks took
    11 s that way against 4 s in bands (measured), because zarr reads the chunks
    of one band concurrently.
    """
    stored = zarr.open_array(array_url, mode="r")
    n_bands = max(min_tasks, math.ceil(stored.nbytes / MAX_TASK_BYTES))
    chunk_rows = math.ceil(stored.shape[0] / stored.chunks[0])
    band_rows = stored.chunks[0] * math.ceil(chunk_rows / n_bands)
    return da.from_zarr(stored, chunks=(band_rows, *stored.shape[1:]))


def downsampled(
    client: Client, array_url: str, min_tasks: int, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The array averaged over blocks so that no side exceeds ``max_side``, computed on the cluster; and its full shape."""
    array = read_bands(array_url, min_tasks)
    # One factor for both axes keeps the array's proportions; a side shorter than it is averaged whole.
    factor = max(1, math.ceil(max(array.shape) / max_side))
    factors = {axis: min(factor, size) for axis, size in enumerate(array.shape)}
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


def render_thumbnail(values: np.ndarray) -> bytes:
    """The values alone, one pixel each, in the full picture's colour map."""
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, values, cmap="viridis", format="png")
    return buffer.getvalue()


def preview_png(client: Client, array_url: str, title: str, min_tasks: int, size: str = "full") -> bytes:
    """The full picture, or with ``size="thumbnail"`` a small one without title or colour bar.

    ``min_tasks``: the number of workers, each of which reads a part of the array.
    """
    if size == "thumbnail":
        return render_thumbnail(downsampled(client, array_url, min_tasks, THUMBNAIL_SIDE)[0])
    values, shape = downsampled(client, array_url, min_tasks)
    return render_png(values, shape, title)
