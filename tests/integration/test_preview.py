"""GET /jobs/<id>/preview.png on the real stack: a real PNG, and a large array never loaded whole by the gateway."""

import io
import tracemalloc

import matplotlib.image
from flask import Flask

from conftest import BUCKET
from helpers import wait_for

LARGE = {"shape": [10000, 10000], "chunks": [1000, 1000]}


def test_a_finished_job_has_a_png_preview_and_others_a_json_error(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/jobs/never-submitted/preview.png").json["error"]["code"] == "job_not_found"
    assert client.get("/submit_job/previewed?seed=7").status_code == 200

    response = client.get("/jobs/previewed/preview.png")

    assert response.status_code == 200 and response.mimetype == "image/png"
    pixels = matplotlib.image.imread(io.BytesIO(response.data), format="png")
    assert pixels.shape[:2] == (500, 600)
    assert pixels[:, :, :3].std() > 0.1, "a picture, not a blank"


def test_a_large_array_is_averaged_down_on_the_workers(app: Flask) -> None:
    client = app.test_client()
    assert client.post("/jobs", json={"job_id": "previewed-large", **LARGE}).status_code == 202
    not_yet = client.get("/jobs/previewed-large/preview.png")
    assert not_yet.status_code == 409 and not_yet.json["error"]["code"] == "job_not_done"
    wait_for(lambda: client.get("/jobs/previewed-large").json["status"] == "done", 120, "the large job")

    tracemalloc.start()
    try:
        response = client.get("/jobs/previewed-large/preview.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 200
    assert matplotlib.image.imread(io.BytesIO(response.data), format="png").shape[:2] == (500, 600)
    assert peak < 50 * 2**20, f"the gateway allocated {peak / 2**20:.0f} MB for a 400 MB array"


def test_a_thumbnail_is_small_and_a_browser_that_has_it_is_told_so(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/submit_job/thumbnailed?seed=7&shape=1000,2000").status_code == 200

    response = client.get("/jobs/thumbnailed/preview.png?size=thumbnail")

    assert response.status_code == 200 and response.mimetype == "image/png"
    pixels = matplotlib.image.imread(io.BytesIO(response.data), format="png")
    assert pixels.shape[:2] == (47, 95), "one pixel per averaged value, at most 96 a side, in the array's proportions"
    assert response.headers["Cache-Control"] == "no-cache" and response.get_etag()[0]
    again = client.get("/jobs/thumbnailed/preview.png?size=thumbnail", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    full = client.get("/jobs/thumbnailed/preview.png", headers={"If-None-Match": response.headers["ETag"]})
    assert full.status_code == 200, "the full picture is another picture"
    assert full.headers["ETag"] != response.headers["ETag"]


def test_an_unknown_size_is_refused(app: Flask) -> None:
    response = app.test_client().get("/jobs/thumbnailed/preview.png?size=huge")
    assert response.status_code == 400 and "size must be one of full, thumbnail" in response.json["error"]["message"]


def test_each_picture_is_drawn_once_and_then_read_from_beside_the_result(app: Flask, results_fs) -> None:
    client = app.test_client()
    job = client.get("/submit_job/drawn-once?seed=11&shape=200,200&chunks=100,100").json
    drawn = {size: client.get(f"/jobs/drawn-once/preview.png?size={size}").data for size in ("full", "thumbnail")}
    stored = sorted(path.rsplit("/", 1)[-1] for path in results_fs.ls(f"{BUCKET}/.previews/drawn-once"))
    assert len(stored) == 2 and stored[0].endswith("-full.png") and stored[1].endswith("-thumbnail.png")
    assert not [path for path in results_fs.find(job["url"].removeprefix("s3://")) if path.endswith(".png")], "the Zarr group holds Zarr only"

    # Without the array, a picture can only come from what was stored.
    results_fs.rm(f"{job['url'].removeprefix('s3://')}/data", recursive=True)

    for size, picture in drawn.items():
        again = client.get(f"/jobs/drawn-once/preview.png?size={size}")
        assert again.status_code == 200 and again.data == picture, size


def test_deleting_a_job_deletes_its_pictures(app: Flask, results_fs) -> None:
    client = app.test_client()
    client.get("/submit_job/pictured-then-deleted?shape=100,100")
    assert client.get("/jobs/pictured-then-deleted/preview.png?size=thumbnail").status_code == 200
    assert results_fs.exists(f"{BUCKET}/.previews/pictured-then-deleted")

    assert client.delete("/jobs/pictured-then-deleted").status_code == 204

    assert not results_fs.exists(f"{BUCKET}/.previews/pictured-then-deleted")
