"""How a job is split into tasks, and what a task computes and writes: on in-memory and on-disk zarr, no cluster."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.storage

from helpers import random_job
from science_gateway.apps.base import Output
from science_gateway.apps.random_array import RandomArray, expected_array
from science_gateway.region_writes import (
    BAND_BYTES,
    MAX_TASK_BYTES,
    AppFailed,
    AppTask,
    ArrayTarget,
    StoreWriteFailed,
    bands,
    stop_run,
    task_regions,
    write_region,
)  # fmt: skip
from science_gateway.results_store import ResultsStore

# As the gateway makes its arrays: uncompressed, zarr 3's chunk keys with "." separators.
GATEWAYS_LAYOUT = {"compressors": None, "chunk_key_encoding": {"name": "default", "separator": "."}}


RANDOM_ARRAY = "science_gateway.apps.random_array:RandomArray"


def random_task(seed: int, target: ArrayTarget, implementation: str = RANDOM_ARRAY, version: str = RandomArray.version) -> AppTask:
    """A random-array job's task, as the gateway sends it."""
    output = Output(target.shape, target.chunks, target.dtype.name, target.shards)
    return AppTask("random-array", version, implementation, {"seed": seed}, output, {})


def write_random_region(region: tuple[slice, ...], *, run_id: str, target: ArrayTarget, seed: int) -> int:
    """The chunks the task wrote."""
    return write_region(region, run_id=run_id, target=target, task=random_task(seed, target)).chunks


@pytest.mark.parametrize(
    ("shape", "chunks", "n_tasks"),
    [((1000, 1000), (100, 100), 3), ((250, 120), (100, 50), 2), ((250, 120), (100, 50), 7), ((10, 10), (10, 10), 3), ((100, 1000), (100, 100), 4)],
)
def test_task_regions_tile_the_array_in_whole_chunks(shape: tuple, chunks: tuple, n_tasks: int) -> None:
    regions = task_regions(shape, chunks, n_tasks)
    covered = np.zeros(shape, dtype=int)
    for region in regions:
        covered[region] += 1
        for part, step, size in zip(region, chunks, shape, strict=True):
            assert part.start % step == 0 and (part.stop % step == 0 or part.stop == size), "regions are whole chunks"
    assert (covered == 1).all()
    n_chunks = math.prod(math.ceil(size / step) for size, step in zip(shape, chunks, strict=True))
    assert min(n_tasks, n_chunks) <= len(regions) <= n_tasks * 2


def test_a_default_job_is_one_task_per_worker_and_a_large_one_is_cut_near_the_task_size() -> None:
    assert len(task_regions((1000, 1000), (100, 100), 3)) == 3
    large = random_job(seed=1, shape=(10000, 10000), chunks=(100, 100)).output
    regions = task_regions(large.shape, large.chunks, math.ceil(large.nbytes / MAX_TASK_BYTES))
    assert max(math.prod(part.stop - part.start for part in region) * 4 for region in regions) < 2 * MAX_TASK_BYTES


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("n_tasks", [1, 3, 7])
def test_the_array_is_the_same_however_the_chunks_are_grouped_into_tasks(tmp_path: Path, n_tasks: int, zarr_format: int) -> None:
    # Edge chunks included: the workers write each chunk's object themselves, padded as zarr pads it.
    shape, chunks = (250, 120), (100, 50)
    layout = GATEWAYS_LAYOUT if zarr_format == 3 else {"compressors": None}
    array = zarr.create_array(
        zarr.storage.LocalStore(tmp_path), name="data", shape=shape, chunks=chunks, dtype="float64", zarr_format=zarr_format, **layout
    )
    target = ArrayTarget(tmp_path.as_uri(), "data", array.metadata)
    written = sum(write_random_region(region, run_id="run", target=target, seed=42) for region in task_regions(shape, chunks, n_tasks))
    assert written == 9
    assert np.array_equal(array[:], expected_array(42, shape, chunks, "float64"))


@pytest.mark.parametrize(
    ("region", "unit", "expected"),
    [
        # The default job's chunks: a band is a row of them (400 kB).
        ((slice(0, 1000), slice(0, 1000)), (100, 100), [(slice(row, row + 100), slice(0, 1000)) for row in range(0, 1000, 100)]),
        # Objects of 4 MB: one a band.
        ((slice(1000, 2000), slice(0, 3000)), (1000, 1000), [(slice(1000, 2000), slice(column, column + 1000)) for column in range(0, 3000, 1000)]),
        # A row of small objects wider than a band is cut, at the array's edge too.
        (
            (slice(0, 20), slice(0, 70000)), (10, 10),
            [(slice(row, row + 10), slice(column, min(column + 26210, 70000))) for row in (0, 10) for column in (0, 26210, 52420)],
        ),
    ],
)
def test_a_task_makes_its_objects_in_bands_of_whole_objects_of_about_a_mebibyte(tmp_path: Path, region: tuple, unit: tuple, expected: list) -> None:
    shape = tuple(part.stop for part in region)
    array = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="data", shape=shape, chunks=unit, dtype="float32", **GATEWAYS_LAYOUT)
    found = bands(region, ArrayTarget(tmp_path.as_uri(), "data", array.metadata))
    assert found == expected
    assert all((band[1].stop - band[1].start) * (band[0].stop - band[0].start) * 4 <= max(BAND_BYTES, 4 * unit[0] * unit[1]) for band in found)


class StoppingAfterItsFirstBand(RandomArray):
    """An app whose first computation stops the run, as a cancel reaching the worker meanwhile does."""

    def compute(self, region, parameters, output, inputs):  # type: ignore[no-untyped-def]
        stop_run("stopped-between-bands")
        return super().compute(region, parameters, output, inputs)


def test_a_run_stopped_while_its_task_runs_writes_no_band_made_after_the_stop(tmp_path: Path) -> None:
    # Rows of 10 chunks of 40 kB: a band each.
    array = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="data", shape=(300, 1000), chunks=(100, 100), dtype="float32", **GATEWAYS_LAYOUT)
    target = ArrayTarget(tmp_path.as_uri(), "data", array.metadata)
    task = random_task(3, target, f"{__name__}:StoppingAfterItsFirstBand")
    written = write_region((slice(0, 300), slice(0, 1000)), run_id="stopped-between-bands", target=target, task=task)
    assert written.chunks == 10
    assert sorted(path.name for path in (tmp_path / "data").iterdir() if path.name != "zarr.json") == [f"c.0.{column}" for column in range(10)]
    assert written.seconds >= written.making_seconds > 0


def test_a_stopped_run_writes_nothing(tmp_path: Path) -> None:
    array = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="data", shape=(10, 10), chunks=(5, 5), dtype="float32", **GATEWAYS_LAYOUT)
    stop_run("stopped-run")
    target = ArrayTarget(tmp_path.as_uri(), "data", array.metadata)
    assert write_random_region((slice(0, 10), slice(0, 10)), run_id="stopped-run", target=target, seed=1) == 0
    assert array.nchunks_initialized == 0


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_result_has_no_group_metadata_until_it_is_marked_complete(tmp_path: Path, zarr_format: int) -> None:
    store = ResultsStore(str(tmp_path))
    result = store.pending_result("job-1.json", "job-1", random_job(seed=5, shape=(20, 30), chunks=(10, 10)).output, zarr_format)
    assert not any(tmp_path.iterdir()), "nothing is written before the job begins"

    store.begin_result(result, {"job_id": "job-1", "status": "running"})
    assert json.loads((tmp_path / ".jobs" / "job-1.json").read_text())["status"] == "running"
    for region in task_regions((20, 30), (10, 10), 2):
        write_random_region(region, run_id="run", target=result.target, seed=5)
    with pytest.raises(FileNotFoundError):
        zarr.open_group(str(tmp_path / "job-1"), mode="r")

    store.mark_complete(result)
    group = zarr.open_group(str(tmp_path / "job-1"), mode="r")
    assert group.metadata.consolidated_metadata is not None
    assert np.array_equal(group["data"][:], expected_array(5, (20, 30), (10, 10), "float32"))


@pytest.mark.parametrize(("shape", "chunks", "shards"), [((250, 120), (50, 40), (100, 80)), ((1000, 1000), (100, 100), (1000, 1000))])
def test_a_sharded_array_is_the_unsharded_one_value_for_value_and_one_object_per_shard(tmp_path: Path, shape, chunks, shards) -> None:
    array = zarr.create_array(
        zarr.storage.LocalStore(tmp_path), name="data", shape=shape, chunks=chunks, shards=shards, dtype="float32", **GATEWAYS_LAYOUT
    )
    target = ArrayTarget(tmp_path.as_uri(), "data", array.metadata)
    written = sum(write_random_region(region, run_id="sharded", target=target, seed=9) for region in task_regions(shape, shards, 3))
    assert written == math.prod(math.ceil(size / step) for size, step in zip(shape, chunks, strict=True)), "progress counts chunks"
    stored = zarr.open_array(zarr.storage.LocalStore(tmp_path), path="data", mode="r")
    assert (stored.chunks, stored.shards) == (chunks, shards), "readers still read chunks of the requested size"
    np.testing.assert_array_equal(stored[:], expected_array(9, shape, chunks, "float32"))
    data_objects = [path for path in (tmp_path / "data").iterdir() if path.name != "zarr.json"]
    assert len(data_objects) == math.prod(math.ceil(size / step) for size, step in zip(shape, shards, strict=True))


class Refusing(RandomArray):
    """An app whose computation raises, as a scientist's code may."""

    def compute(self, region, parameters, output, inputs):  # type: ignore[no-untyped-def]
        raise ValueError("the model diverged at step 12")


class WrongShape(RandomArray):
    def compute(self, region, parameters, output, inputs):  # type: ignore[no-untyped-def]
        return np.zeros((1, 1), dtype="float32")


@pytest.mark.parametrize(
    ("implementation", "version", "message"),
    [
        (f"{__name__}:Refusing", RandomArray.version, "app 'random-array' failed: ValueError: the model diverged at step 12"),
        (f"{__name__}:WrongShape", RandomArray.version, "app 'random-array' returned values of shape [1, 1] and dtype float32 for a region of shape [5, 10]"),
        ("not_installed_here:App", RandomArray.version, "app 'random-array' version 1.0.0 is not installed on the Dask workers (ModuleNotFoundError"),
        (RANDOM_ARRAY, "0.9.0", "the Dask workers have app 'random-array' version 1.0.0, and the gateway planned with version 0.9.0"),
    ],
)
def test_an_app_that_fails_on_the_worker_fails_its_task_with_a_message_naming_it(tmp_path: Path, implementation: str, version: str, message: str) -> None:
    array = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="data", shape=(10, 10), chunks=(5, 5), dtype="float32", **GATEWAYS_LAYOUT)
    target = ArrayTarget(tmp_path.as_uri(), "data", array.metadata)
    with pytest.raises(AppFailed) as failed:
        write_region((slice(0, 10), slice(0, 10)), run_id="failing", target=target, task=random_task(1, target, implementation, version))
    assert str(failed.value).startswith(message)
    assert array.nchunks_initialized == 0, "nothing of the region is written"


class FailingOnItsSecondBand(RandomArray):
    """An app whose computation of rows from 100 on raises: the first band is made and written, the second fails."""

    def compute(self, region, parameters, output, inputs):  # type: ignore[no-untyped-def]
        if region[0].start >= 100:
            raise ValueError("out of memory on the second band")
        return super().compute(region, parameters, output, inputs)


def written_objects(array_dir: Path) -> set[str]:
    return {path.name for path in array_dir.iterdir() if path.name != "zarr.json"}


def test_an_app_failing_on_a_later_band_fails_the_task_as_the_apps_failure_with_no_write_left_pending(tmp_path: Path) -> None:
    array = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="data", shape=(300, 1000), chunks=(100, 100), dtype="float32", **GATEWAYS_LAYOUT)
    target = ArrayTarget(tmp_path.as_uri(), "data", array.metadata)
    with pytest.raises(AppFailed, match="app 'random-array' failed: ValueError: out of memory on the second band"):
        write_region((slice(0, 300), slice(0, 1000)), run_id="fails-later", target=target, task=random_task(4, target, f"{__name__}:FailingOnItsSecondBand"))
    left = written_objects(tmp_path / "data")
    assert left <= {f"c.0.{column}" for column in range(10)}, "nothing of the failed band or after it"
    time.sleep(0.5)
    assert written_objects(tmp_path / "data") == left, "no write of the task goes on after it failed"


def test_a_put_that_fails_fails_the_task_as_storage_with_no_write_left_pending(tmp_path: Path) -> None:
    array = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="data", shape=(1000, 1000), chunks=(100, 100), dtype="float32", **GATEWAYS_LAYOUT)
    # A directory where the first band's fourth chunk goes: the store refuses that one PUT.
    (tmp_path / "data" / "c.0.3" / "in-the-way").mkdir(parents=True)
    target = ArrayTarget(tmp_path.as_uri(), "data", array.metadata)
    with pytest.raises(StoreWriteFailed):
        write_region((slice(0, 1000), slice(0, 1000)), run_id="put-fails", target=target, task=random_task(4, target))
    left = written_objects(tmp_path / "data")
    assert len(left) < 100, "the task stopped before its last band"
    time.sleep(0.5)
    assert written_objects(tmp_path / "data") == left, "no write of the task goes on after it failed"
