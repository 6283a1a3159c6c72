"""The web app for a detector (``create_app(task="detection")``): the API and the page.

The detector is :func:`tests.support.detectors.trained_detector` (coloured squares, class
1 red, class 2 blue) on 64×64 raw pixels; each scene holds two squares of distinct
classes, so each detection's map must lie on its own square.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sacam.models import load_model
from sacam.preprocess import Preprocess
from tests.support.detectors import scenes
from tests.support.serve import decode_data_url, png_bytes, require, run_job
from tests.support.task_models import detector

require("fastapi")
require("python_multipart")
require("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from sacam.serve import create_app  # noqa: E402

LOCAL = "http://127.0.0.1"
NAMES = ["background", "red", "blue"]


def scene_png(seed: int = 7, index: int = 0) -> tuple[bytes, list[list[float]], list[int]]:
    """A scene as PNG bytes with its true boxes and labels."""
    images, boxes, labels = scenes(index + 1, seed=seed, objects=(2,), distinct=True)
    arr = (images[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return png_bytes(Image.fromarray(arr)), boxes[index].tolist(), labels[index].tolist()


def detector_model():  # noqa: ANN201
    """The trained detector with its class names, at 64 px without normalisation."""
    pre = Preprocess(size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return load_model(detector(), preprocess=pre, class_names=NAMES)


@pytest.fixture(scope="module")
def client():  # noqa: ANN201
    app = create_app(detector_model(), task="detection")
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def detect(client, png: bytes, **fields):  # noqa: ANN001, ANN201
    files = {"image": ("scene.png", png, "image/png")}
    return client.post("/api/detect", files=files, data=fields)


def explain(client, body: dict) -> dict:  # noqa: ANN001
    return run_job(client, "/api/jobs/explain-detection", body)


def peak(result: dict) -> tuple[int, int]:
    grey = decode_data_url(result["maps"][0]["map"])
    row, col = np.unravel_index(int(np.argmax(grey)), grey.shape)
    return int(row), int(col)


def test_health_says_detection(client) -> None:  # noqa: ANN001
    health = client.get("/api/health").json()
    assert health["task"] == "detection"
    assert client.get("/api/methods").json()["default"] == "grad-cam"


def test_detections_are_listed_with_their_boxes(client) -> None:  # noqa: ANN001
    png, boxes, labels = scene_png()
    answer = detect(client, png)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert (found["width"], found["height"]) == (64, 64)
    assert decode_data_url(found["image"]).shape == (64, 64, 3)
    assert [d["index"] for d in found["detections"]] == [0, 1]
    assert sorted(d["label"] for d in found["detections"]) == sorted(labels)
    scores = [d["score"] for d in found["detections"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.5
    for d in found["detections"]:
        assert d["name"] == NAMES[d["label"]]
        true = boxes[labels.index(d["label"])]
        assert np.allclose(d["box"], true, atol=3.0)
    high = detect(client, png, score_threshold="0.99").json()["detections"]
    assert all(d["score"] >= 0.99 for d in high) and len(high) < 2


def test_each_detection_gets_its_own_map_on_its_box(client) -> None:  # noqa: ANN001
    png, _, _ = scene_png()
    found = detect(client, png).json()
    peaks = []
    for d in found["detections"]:
        body = {"result_id": found["result_id"], "index": d["index"], "methods": ["grad-cam"]}
        result = explain(client, {**body, "layer": "backbone"})
        assert result["explained_class"] == {
            "class_index": d["label"], "name": d["name"], "probability": d["score"]
        }  # fmt: skip
        assert result["layer"] == "backbone" and len(result["maps"]) == 1
        row, col = peak(result)
        x1, y1, x2, y2 = d["box"]
        assert x1 - 1 <= col <= x2 + 1 and y1 - 1 <= row <= y2 + 1
        peaks.append((row, col))
        npy = client.get(f"/api/results/{result['result_id']}/maps/grad-cam.npy")
        assert npy.status_code == 200
    assert peaks[0] != peaks[1]


def test_a_detection_by_label_and_box(client) -> None:  # noqa: ANN001
    png, boxes, labels = scene_png()
    found = detect(client, png).json()
    blue = boxes[labels.index(2)]
    body = {"result_id": found["result_id"], "label": 2, "box": blue, "methods": ["grad-cam"]}
    result = explain(client, {**body, "layer": "backbone"})
    assert result["explained_class"]["name"] == "blue"
    row, col = peak(result)
    assert blue[0] - 1 <= col <= blue[2] + 1 and blue[1] - 1 <= row <= blue[3] + 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"index": 9}, 400, "detection 9 is not in the list: the image has 2 detection(s)"),
        ({"label": 1}, 400, "name the detection by its index, or by its label and box"),
        ({"label": 1, "box": [5, 5, 1, 9]}, 400, "x2 > x1 and y2 > y1"),
        ({"index": 0, "methods": ["nope"]}, 400, "unknown method"),
        ({"index": 0, "layer": "nope"}, 400, "nope"),
    ],
)
def test_bad_detection_requests_are_refused(client, body, status, message) -> None:  # noqa: ANN001
    png, _, _ = scene_png()
    found = detect(client, png).json()
    response = client.post(
        "/api/jobs/explain-detection", json={"result_id": found["result_id"], **body}
    )
    assert response.status_code == status and message in response.json()["detail"]


def test_a_dense_detector_is_served_by_its_format() -> None:
    from sacam.detection import DenseFormat
    from tests.support.task_models import dense_detector

    pre = Preprocess(size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    loaded = load_model(dense_detector(), preprocess=pre, class_names=["red", "blue"])
    app = create_app(loaded, task="detection", dense=DenseFormat(box_format="xyxy"))
    png, boxes, labels = scene_png()
    with TestClient(app, base_url=LOCAL) as c:
        found = detect(c, png).json()
        # dense labels are class columns: torchvision's label 1 is column 0
        assert sorted(d["label"] + 1 for d in found["detections"]) == sorted(labels)
        for d in found["detections"]:
            assert d["name"] == ["red", "blue"][d["label"]]
            true = boxes[labels.index(d["label"] + 1)]
            assert np.allclose(d["box"], true, atol=3.0)
            body = {"result_id": found["result_id"], "index": d["index"], "layer": "net.backbone"}
            row, col = peak(explain(c, body))
            assert true[0] - 1 <= col <= true[2] + 1 and true[1] - 1 <= row <= true[3] + 1


def test_a_classifier_server_has_no_detections() -> None:
    from tests.support.serve import colour_model, red_green_png

    with TestClient(create_app(colour_model()), base_url=LOCAL) as c:
        assert c.get("/api/health").json()["task"] == "classification"
        response = detect(c, red_green_png())
        assert response.status_code == 400 and "--task detection" in response.json()["detail"]


def test_a_classifier_is_refused_as_a_detector() -> None:
    from sacam.errors import ModelError
    from tests.support.serve import colour_model

    with pytest.raises(ModelError, match="needs a detector, but the model returned Tensor"):
        create_app(colour_model(), task="detection")


def test_the_page_draws_boxes_and_explains_the_clicked_one() -> None:
    from tests.support.serve import (
        CHROMIUM,
        live_server,
        serious_accessibility_problems,
        sync_playwright,
    )

    png, _, _ = scene_png()
    start = sync_playwright()
    with live_server(create_app(detector_model(), task="detection")) as base, start() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=True)
        page = context.new_page()
        page.goto(base + "/")
        page.wait_for_function(
            "() => document.querySelector('#explain').textContent === 'Detect objects'"
        )
        assert page.is_checked("#methods input[value='grad-cam']")
        assert page.is_hidden("#curves-section")
        page.set_input_files("#file-input", files=[
            {"name": "scene.png", "mimeType": "image/png", "buffer": png}
        ])  # fmt: skip
        page.wait_for_function("() => !document.querySelector('#explain').disabled")
        page.click("#explain")
        page.wait_for_selector("#detection-view .box")
        assert page.locator("#detection-view .box").count() == 2
        assert page.locator("#detections button").count() == 2
        first = page.locator("#detection-view .box").nth(0)
        label = first.get_attribute("aria-label") or ""
        assert label.startswith("explain detection 1: ")
        first.click()
        page.wait_for_selector("#maps .card[data-method='grad-cam'] img")
        text = page.text_content("#detection-explained") or ""
        assert text.startswith("Maps explain detection 1: ")
        assert first.get_attribute("aria-pressed") == "true"
        one = page.get_attribute("#maps .card[data-method='grad-cam'] img.overlay", "src")
        assert one and one.startswith("data:image/png;base64,")
        page.focus("#detections li:nth-child(2) button")  # by keyboard: the second detection
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#detection-explained').textContent"
            ".startsWith('Maps explain detection 2: ')"
        )
        page.wait_for_selector("#maps .card[data-method='grad-cam'] img")
        two = page.get_attribute("#maps .card[data-method='grad-cam'] img.overlay", "src")
        assert two and two != one
        assert serious_accessibility_problems(page) == []
        browser.close()
