"""How a job is split into tasks, and what a task writes: on in-memory and on-disk zarr, no cluster."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.storage

from science_gateway.job_parameters import RandomArraySpec
from science_gateway.random_chunks import MAX_TASK_BYTES, ArrayTarget, chunk_selections, random_chunk, stop_run, task_regions, write_random_region
from science_gateway.results_store import ResultsStore

# As the gateway makes its arrays: uncompressed, zarr 3's chunk keys with "." separators.
GATEWAYS_LAYOUT = {"compressors": None, "chunk_key_encoding": {"name": "default", "separator": "."}}


def expected_array(seed: int, shape: tuple[int, int], chunks: tuple[int, int], dtype: str) -> np.ndarray:
    expected = np.empty(shape, dtype=dtype)
    for index, selection in enumerate(chunk_selections(shape, chunks)):
        expected[selection] = random_chunk(seed, index, selection, dtype)
    return expected


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
    large = RandomArraySpec(seed=1, shape=(10000, 10000), chunks=(100, 100))
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


def test_a_stopped_run_writes_nothing(tmp_path: Path) -> None:
    array = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="data", shape=(10, 10), chunks=(5, 5), dtype="float32", **GATEWAYS_LAYOUT)
    stop_run("stopped-run")
    target = ArrayTarget(tmp_path.as_uri(), "data", array.metadata)
    assert write_random_region((slice(0, 10), slice(0, 10)), run_id="stopped-run", target=target, seed=1) == 0
    assert array.nchunks_initialized == 0


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_result_has_no_group_metadata_until_it_is_marked_complete(tmp_path: Path, zarr_format: int) -> None:
    store = ResultsStore(str(tmp_path))
    result = store.pending_result("job-1.json", "job-1", RandomArraySpec(seed=5, shape=(20, 30), chunks=(10, 10)), zarr_format)
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
