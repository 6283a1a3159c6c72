"""The web app for a segmenter (``create_app(task="segmentation")``): the API.

The segmenter is :func:`tests.support.segmenters.trained_segmenter` (32×32 dark scenes,
a red square of class 1 and a blue square of class 2 on a 4×4 grid of 8-pixel cells) on
raw pixels; the scenes come with their true label maps, so each class's listed share and
its map's place are checked against where the squares really are. The page is driven in
a real browser in ``tests/serve/test_browser.py``.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sacam.models import LoadedModel, load_model
from sacam.preprocess import Preprocess
from tests.support.segmenters import segmenter as trained_copy
from tests.support.segmenters import square_scenes
from tests.support.serve import (
    colour_model,
    decode_data_url,
    png_bytes,
    require,
    run_job,
    wait_job,
    wait_until,
)

require("fastapi")
require("python_multipart")
require("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from sacam.serve import create_app  # noqa: E402
from sacam.serve.segment import MAX_LISTED_CLASSES, UNLISTED  # noqa: E402

LOCAL = "http://127.0.0.1"
NAMES = ["background", "red", "blue"]
RAW = Preprocess(size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def segmenter_model(net: nn.Module | None = None) -> LoadedModel:
    """The trained square segmenter (or ``net``) with its class names, at 32 px, raw pixels."""
    return load_model(net if net is not None else trained_copy(), preprocess=RAW, class_names=NAMES)


def scene_png(seed: int = 3) -> tuple[bytes, np.ndarray]:
    """A scene of a red and a blue square as PNG bytes, and its true ``(32, 32)`` label map."""
    images, labels = square_scenes(1, seed=seed)
    arr = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return png_bytes(Image.fromarray(arr)), labels[0].numpy()


def red_only_png() -> bytes:
    """A dark noisy scene with one red square (rows and columns 8 to 15), and no blue."""
    arr = (torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(5)) * 0.2).numpy()
    arr[8:16, 8:16] = (1.0, 0.0, 0.0)
    return png_bytes(Image.fromarray((arr * 255).round().astype(np.uint8)))


@pytest.fixture(scope="module")
def client():  # noqa: ANN201
    with TestClient(create_app(segmenter_model(), task="segmentation"), base_url=LOCAL) as c:
        yield c


def segment(client, png: bytes, **headers):  # noqa: ANN001, ANN003, ANN201
    files = {"image": ("scene.png", png, "image/png")}
    return client.post("/api/segment", files=files, headers=headers)


def explain(client, body: dict) -> dict:  # noqa: ANN001
    return run_job(client, "/api/jobs/explain-segment", body)


def test_health_and_default_method_say_segmentation(client) -> None:  # noqa: ANN001
    assert client.get("/api/health").json()["task"] == "segmentation"
    assert client.get("/api/methods").json()["default"] == "grad-cam"
    # the automatic layer is the features' output, not the score map it would explain itself by
    assert client.get("/api/layers").json()["default"] == "features"


def test_the_predicted_classes_are_listed_with_their_shares_and_colours(client) -> None:  # noqa: ANN001
    png, truth = scene_png()
    answer = segment(client, png)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert (found["width"], found["height"]) == (32, 32)
    assert decode_data_url(found["image"]).shape == (32, 32, 3)
    classes = found["classes"]
    assert sorted(c["class_index"] for c in classes) == [0, 1, 2]
    shares = [c["share"] for c in classes]
    assert shares == sorted(shares, reverse=True) and classes[0]["name"] == "background"
    assert all(c["name"] == NAMES[c["class_index"]] for c in classes)
    for c in classes:  # the trained model labels the squares nearly pixel for pixel
        assert abs(c["share"] - float((truth == c["class_index"]).mean())) < 0.02
    assert len({c["colour"] for c in classes}) == 3
    assert (found["unlisted"], found["unlisted_share"]) == (0, 0.0)
    positions = decode_data_url(found["positions"])
    assert positions.shape == (32, 32)
    for k, c in enumerate(classes):  # the list positions are the true regions
        assert (positions[truth == c["class_index"]] == k).mean() > 0.9
    overlay = decode_data_url(found["overlay"]).astype(float)
    image = decode_data_url(found["image"]).astype(float)
    k = next(k for k, c in enumerate(classes) if c["class_index"] == 1)
    colour = np.array([int(classes[k]["colour"][i : i + 2], 16) for i in (1, 3, 5)])
    red = positions == k  # half the image, half the class colour
    assert red.sum() > 50 and np.abs(overlay[red] - (image[red] + colour) / 2).max() <= 0.5


@pytest.mark.parametrize("cls", [1, 2])
def test_a_class_map_puts_its_energy_on_the_class_region(client, cls: int) -> None:  # noqa: ANN001
    png, truth = scene_png()
    found = segment(client, png).json()
    result = explain(client, {"result_id": found["result_id"], "class_index": cls})
    share = next(c["share"] for c in found["classes"] if c["class_index"] == cls)
    assert result["explained_class"] == {
        "class_index": cls, "name": NAMES[cls], "probability": share
    }  # fmt: skip
    assert result["layer"] == "features" and [m["method"] for m in result["maps"]] == ["grad-cam"]
    npy = client.get(f"/api/results/{result['result_id']}/maps/grad-cam.npy")
    cam = np.load(io.BytesIO(npy.content))
    assert cam.shape == (32, 32)
    inside = cam[truth == cls].sum() / cam.sum()
    # the square is 1/16 of the image: a map spread evenly would put 6% inside it
    assert inside > 0.5, inside
    assert cam[truth == 3 - cls].sum() / cam.sum() < 0.1  # the other class's square
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    assert truth[row, col] == cls


def test_a_class_absent_from_the_prediction_is_refused(client) -> None:  # noqa: ANN001
    found = segment(client, red_only_png()).json()
    assert [c["class_index"] for c in found["classes"]] == [0, 1]
    rid = found["result_id"]
    cases = [
        ({"class_index": 2}, "class 2 is not in the image's predicted label map: choose one of "
         "the classes it holds (0, 1)"),
        ({"class_index": 7}, "class 7 does not exist: the model's classes are 0 to 2"),
        ({"class_index": 1, "methods": ["nope"]}, "unknown method"),
        ({"class_index": 1, "layer": "nope"}, "unknown layer 'nope'"),
    ]  # fmt: skip
    for body, message in cases:
        response = client.post("/api/jobs/explain-segment", json={"result_id": rid, **body})
        assert response.status_code == 400 and message in response.json()["detail"], response.text
    malformed = client.post("/api/jobs/explain-segment", json={"result_id": rid, "class_index": -1})
    assert malformed.status_code == 422
    gone = client.post("/api/jobs/explain-segment", json={"result_id": "f" * 32, "class_index": 1})
    assert gone.status_code == 404 and "expired" in gone.json()["detail"]


def test_routes_of_other_tasks_are_refused(client) -> None:  # noqa: ANN001
    png, _ = scene_png()
    files = {"image": ("scene.png", png, "image/png")}
    detect = client.post("/api/detect", files=files)
    assert detect.status_code == 400
    assert detect.json()["detail"] == (
        "this server explains a segmenter; this request needs a detector: start sacam serve "
        "with --task detection"
    )
    explained = client.post("/api/explain", files=files, data={"methods": ["grad-cam"]})
    assert explained.status_code == 400 and "--task classification" in explained.json()["detail"]
    with TestClient(create_app(colour_model()), base_url=LOCAL) as c:
        refused = c.post("/api/segment", files=files)
        assert refused.status_code == 400 and "--task segmentation" in refused.json()["detail"]


def test_a_classifier_is_refused_as_a_segmenter() -> None:
    from sacam.errors import ModelError

    with pytest.raises(ModelError, match=r"needs a segmenter .* returned Tensor \(1, 5\)"):
        create_app(colour_model(), task="segmentation")


def test_uploads_pass_the_guard_and_the_limits() -> None:
    png, _ = scene_png()
    app = create_app(segmenter_model(), task="segmentation", max_pixels=500)
    with TestClient(app, base_url=LOCAL) as c:
        assert segment(c, png, origin="https://evil.example").status_code == 403
        too_big = segment(c, png)
        assert too_big.status_code == 413 and "over the limit of 500" in too_big.json()["detail"]
        assert segment(c, b"not an image").status_code == 415


class Stripes(nn.Module):
    """30 classes in vertical stripes one column wide (class 29 takes the last three)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        columns = torch.arange(32).clamp(max=29)
        self.register_buffer("stripes", 10.0 * nn.functional.one_hot(columns, 30).T[:, None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x).mean(1, keepdim=True)  # the same for every class
        return self.stripes.expand(x.shape[0], -1, x.shape[2], -1) + features


def test_the_list_of_classes_is_capped() -> None:
    loaded = load_model(Stripes(), preprocess=RAW)
    png, _ = scene_png()
    with TestClient(create_app(loaded, task="segmentation"), base_url=LOCAL) as c:
        found = segment(c, png).json()
        listed = [k["class_index"] for k in found["classes"]]
        # the widest stripe first, then by index; the other 10 are counted, not listed
        assert listed == [29, *range(MAX_LISTED_CLASSES - 1)]
        assert found["classes"][0]["share"] == 3 / 32 and found["classes"][0]["name"] == "class 29"
        assert (found["unlisted"], found["unlisted_share"]) == (10, 10 / 32)
        positions = decode_data_url(found["positions"])
        assert (positions[:, 25] == UNLISTED).all() and (positions[:, 3] == 4).all()
        # a class present but not listed can still be explained
        result = explain(c, {"result_id": found["result_id"], "class_index": 25})
        assert result["explained_class"]["name"] == "class 25"


class Gated(nn.Module):
    """The trained segmenter behind a gate: while ``gate`` is clear a forward pass waits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = trained_copy()
        self.gate = threading.Event()
        self.gate.set()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.gate.wait(120):
            raise RuntimeError("the test never opened the gate")
        return self.net(x)  # type: ignore[no-any-return]


def test_the_queue_is_bounded_and_a_running_job_can_be_cancelled() -> None:
    loaded = segmenter_model(Gated())
    gate = loaded.model.gate
    png, _ = scene_png()
    with TestClient(create_app(loaded, task="segmentation", max_queue=1), base_url=LOCAL) as c:
        found = segment(c, png).json()
        body = {"result_id": found["result_id"], "class_index": 1}
        gate.clear()
        # two methods: the job stops when the second one would start
        two = {**body, "methods": ["grad-cam", "grad-cam++"]}
        running = c.post("/api/jobs/explain-segment", json=two).json()
        wait_until(
            lambda: c.get(f"/api/jobs/{running['job_id']}").json()["status"] == "running",
            "the first job to start",
        )
        waiting = c.post("/api/jobs/explain-segment", json=body)
        assert waiting.status_code == 202 and waiting.json()["queue_position"] == 1
        for refused in (c.post("/api/jobs/explain-segment", json=body), segment(c, png)):
            assert refused.status_code == 429 and "retry-after" in refused.headers
        c.delete(f"/api/jobs/{running['job_id']}")
        c.delete(f"/api/jobs/{waiting.json()['job_id']}")
        gate.set()
        assert wait_job(c, running["job_id"])["status"] == "cancelled"
        assert wait_job(c, waiting.json()["job_id"])["status"] == "cancelled"
        assert segment(c, png).status_code == 200


def test_sacam_serve_takes_the_segmentation_task(monkeypatch) -> None:  # noqa: ANN001
    import sacam.serve
    from sacam.cli import main

    seen: dict = {}
    monkeypatch.setattr(sacam.serve, "serve", lambda model, **kw: seen.update(kw, model=model))
    spec = "tests.support.segmenters:segmenter"
    assert main(["serve", "--model", spec, "--task", "segmentation", "--size", "32"]) == 0
    assert seen["task"] == "segmentation" and seen["dense"] is None and seen["size"] == 32
