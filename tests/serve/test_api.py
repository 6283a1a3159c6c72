"""The web app's API, in process (FastAPI's TestClient) on the hand-weighted colour model."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.serve import (
    COLOURS,
    colour_logits,
    colour_model,
    decode_data_url,
    gated_model,
    png_bytes,
    red_green_png,
    require,
    softmax,
    wait_job,
)

require("fastapi")
require("python_multipart")
require("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from sacam import list_methods  # noqa: E402
from sacam.serve import create_app  # noqa: E402
from sacam.serve.guard import DRAIN_MAX_BYTES, Guard  # noqa: E402

LOCAL = "http://127.0.0.1"  # the app answers only to its own address


@pytest.fixture(scope="module")
def loaded():  # noqa: ANN201
    return colour_model()


@pytest.fixture(scope="module")
def client(loaded):  # noqa: ANN001, ANN201
    app = create_app(loaded, max_upload_mb=0.05, max_pixels=100_000)
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def post_explain(client, png: bytes, methods=("grad-cam",), **fields):  # noqa: ANN001, ANN201
    data = {"methods": list(methods), **fields}
    return client.post("/api/explain", files={"image": ("x.png", png, "image/png")}, data=data)


def test_health_methods_layers_samples(client) -> None:  # noqa: ANN001
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["model"] == "Sequential"
    assert health["jobs_pending"] == 0
    methods = client.get("/api/methods").json()
    assert [m["name"] for m in methods["methods"]] == list_methods()
    assert methods["default"] == "sa-cam"
    slow = {m["name"] for m in methods["methods"] if m["slow"]}
    # one forward pass per channel, mask or position: the methods that take seconds
    perturbation = {"score-cam", "ss-cam", "is-cam", "ablation-cam", "group-cam", "recipro-cam"}
    assert perturbation | {"opti-cam", "poly-cam", "fd-cam", "sess"} == slow
    layers = client.get("/api/layers").json()
    # colour_net: 1x1 conv (6 channels) then ReLU, both 16x16; the pool's 1x1 is no map
    assert layers == {
        "default": "1",
        "layers": [
            {"name": "0", "channels": 6, "grid": [16, 16]},
            {"name": "1", "channels": 6, "grid": [16, 16]},
        ],
    }
    assert client.get("/api/samples").json() == {
        "samples": ["chelsea", "coffee", "astronaut", "rocket"]
    }


def test_legrad_is_offered_only_for_models_with_attention_blocks(client) -> None:  # noqa: ANN001
    from torch import nn

    from sacam.serve.deps import unavailable_methods

    legrad = {m["name"]: m for m in client.get("/api/methods").json()["methods"]}["legrad"]
    assert legrad["available"] is False and "attention blocks" in legrad["note"]
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert set(unavailable_methods(cnn)) == {"legrad"}

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    assert unavailable_methods(nn.Sequential(nn.Conv2d(3, 8, 4, 4), Block())) == {}


def test_sample_photo_is_a_png(client) -> None:  # noqa: ANN001
    r = client.get("/api/samples/chelsea")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    bad = client.get("/api/samples/passwd")
    assert bad.status_code == 404 and "unknown sample 'passwd'" in bad.json()["detail"]
    assert client.get("/api/samples/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_explain_matches_hand_computed_predictions_and_maps(client) -> None:  # noqa: ANN001
    # 12 red columns, 4 green ones: mean r = 0.75, g = 0.25
    r = post_explain(client, red_green_png(12), methods=["grad-cam", "cam"])
    assert r.status_code == 200, r.text
    out = r.json()
    probs = softmax(colour_logits(0.75, 0.25, 0.0))
    preds = out["predictions"]
    assert len(preds) == 5
    assert [p["probability"] for p in preds] == sorted(
        (p["probability"] for p in preds), reverse=True
    )
    for p in preds:
        assert p["name"] == COLOURS[p["class_index"]]
        assert p["probability"] == pytest.approx(probs[p["class_index"]], rel=1e-5)
    assert out["explained_class"]["class_index"] == 0 and out["explained_class"]["name"] == "red"
    assert [m["method"] for m in out["maps"]] == ["grad-cam", "cam"]
    for m in out["maps"]:
        assert m["time_s"] >= 0 and m["constant"] is False
        # Grad-CAM and CAM weights for "red" are (3, -1, -1, 0, 0, 0)/N and (3, -1, -1, ...):
        # red positions score 3, green ones -1 -> ReLU -> min-max: 1 on red, 0 on green
        grey = decode_data_url(m["map"])
        assert grey.shape == (16, 16)
        assert (grey[:, :12] == 255).all() and (grey[:, 12:] == 0).all()
        # overlay = 0.5 image + 0.5 jet colour; jet(1) = (0.5, 0, 0), jet(0) = (0, 0, 0.5)
        rgb = decode_data_url(m["overlay"])
        assert (rgb[:, :12] == [191, 0, 0]).all()
        assert (rgb[:, 12:] == [0, 128, 64]).all()
        heat = decode_data_url(m["heatmap"])
        assert (heat[:, :12] == [128, 0, 0]).all() and (heat[:, 12:] == [0, 0, 128]).all()
    image = decode_data_url(out["image"])
    assert (image[:, :12] == [255, 0, 0]).all() and (image[:, 12:] == [0, 255, 0]).all()


def test_explain_another_class_by_index_or_name(client) -> None:  # noqa: ANN001
    for target in ("1", "Green"):
        out = post_explain(client, red_green_png(12), target=target).json()
        assert out["explained_class"]["name"] == "green"
        p = softmax(colour_logits(0.75, 0.25, 0.0))[1]
        assert out["explained_class"]["probability"] == pytest.approx(p, rel=1e-5)
        grey = decode_data_url(out["maps"][0]["map"])
        assert (grey[:, :12] == 0).all() and (grey[:, 12:] == 255).all()


def test_another_class_reuses_the_upload_and_its_classification() -> None:
    loaded = gated_model()
    net = loaded.model
    with TestClient(create_app(loaded), base_url=LOCAL) as c:
        first = post_explain(c, red_green_png(12)).json()
        assert first["explained_class"]["name"] == "red"
        calls = net.calls
        job = c.post(
            "/api/jobs/reexplain", json={"result_id": first["result_id"], "target": "green"}
        )
        assert job.status_code == 202, job.text
        info = wait_job(c, job.json()["job_id"])
    assert info["status"] == "done", info
    out = info["result"]
    assert out["explained_class"]["name"] == "green"
    # the image is not sent or classified again: the model ran Grad-CAM's one pass only
    assert net.calls - calls == info["passes_done"] == info["passes_planned"] == 1
    assert out["predictions"] == first["predictions"] and out["image"] == first["image"]
    grey = decode_data_url(out["maps"][0]["map"])
    assert (grey[:, :12] == 0).all() and (grey[:, 12:] == 255).all()  # the green columns


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"methods": ["no-such-cam"]}, 400, "valid methods: cam, grad-cam"),
        ({"methods": ["grad-cam"], "layer": "fc"}, 400, "unknown layer 'fc'"),
        ({"methods": ["grad-cam"], "target": "5"}, 400, "out of range"),
        ({"methods": ["grad-cam"], "target": "purple"}, 400, "neither a class index"),
        ({"methods": ["grad-cam"], "target": "-1"}, 400, "out of range"),
    ],
)
def test_bad_choices_are_400_with_a_message(client, fields, status, words) -> None:  # noqa: ANN001
    r = client.post(
        "/api/explain", files={"image": ("x.png", red_green_png(), "image/png")}, data=fields
    )
    assert r.status_code == status
    assert words in r.json()["detail"]


def test_missing_image_is_422_json(client) -> None:  # noqa: ANN001
    r = client.post("/api/explain", data={"methods": ["grad-cam"]})
    assert r.status_code == 422
    assert "image" in r.json()["detail"]


def test_image_type_is_found_from_its_content(client) -> None:  # noqa: ANN001
    r = client.post(
        "/api/explain",
        files={"image": ("cat.png", b"GIF89a this is not really an image", "image/png")},
        data={"methods": ["grad-cam"]},
    )
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    ok = client.post(
        "/api/explain",
        files={"image": ("notes.txt", red_green_png(), "text/plain")},
        data={"methods": ["grad-cam"]},
    )
    assert ok.status_code == 200
    empty = client.post(
        "/api/explain", files={"image": ("a.png", b"", "image/png")}, data={"methods": ["cam"]}
    )
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]


def test_truncated_image_is_400(client) -> None:  # noqa: ANN001
    data = png_bytes(Image.new("RGB", (64, 64), (9, 80, 200)))
    r = post_explain(client, data[: len(data) // 2])
    assert r.status_code == 400 and "could not be decoded" in r.json()["detail"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_image_bombs_are_refused_before_decoding(client) -> None:  # noqa: ANN001
    # 100000 x 100000 pixels claimed in a 45-byte file: refused from the header alone
    r = post_explain(client, _png_header_only(100_000, 100_000))
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    # the app's own limit (100,000 pixels here): 400 x 300 = 120,000 is over it
    big = png_bytes(Image.new("RGB", (400, 300)))
    r = post_explain(client, big)
    assert r.status_code == 413
    assert "400×300 = 120,000 pixels" in r.json()["detail"]
    # as in the CLI, a JPEG that large is decoded at half scale (200 x 150) instead
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 30, 30)).save(buf, format="JPEG")
    r = post_explain(client, buf.getvalue())
    assert r.status_code == 200
    assert r.json()["explained_class"]["name"] == "red"


def test_upload_over_the_limit_is_413(client) -> None:  # noqa: ANN001
    # the client's limit is 0.05 MB = 52,428 bytes
    r = post_explain(client, b"\x89PNG" + bytes(60_000))
    assert r.status_code == 413
    assert "over the limit of 0.05 MB" in r.json()["detail"]


def test_upload_limit_is_checked_while_reading() -> None:
    """Over the limit, the guard keeps nothing more, drains the rest (bounded), then 413."""
    calls = []
    reads = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        calls.append(scope["path"])

    def body(chunks: int | None):  # noqa: ANN202
        async def receive() -> dict:
            reads.append(1)
            more = chunks is None or len(reads) < chunks  # None: endless
            return {"type": "http.request", "body": b"x" * 1000, "more_body": more}

        return receive

    sent = []

    async def send(message) -> None:  # noqa: ANN001
        sent.append(message)

    def guard(headers: list, chunks: int | None) -> None:
        reads.clear()
        sent.clear()
        headers = [(b"host", b"127.0.0.1:8000"), *headers]
        scope = {"type": "http", "method": "POST", "path": "/api/explain", "headers": headers}
        asyncio.run(Guard(app, max_bytes=10_000, limit_text="10 kB")(scope, body(chunks), send))
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413

    # a 30 kB body without Content-Length: over the limit at the 11th chunk, the other 19
    # are read and dropped before the answer (so that the client can read it)
    guard([], 30)
    assert calls == []  # the app never saw the request
    assert len(reads) == 30
    # an endless body: drained up to DRAIN_MAX_BYTES, then answered
    guard([], None)
    assert len(reads) == DRAIN_MAX_BYTES // 1000 + 1
    # a declared Content-Length over the limit: the body is drained, nothing reaches the app
    guard([(b"content-length", b"20000")], 20)
    assert len(reads) == 20 and calls == []
    # declared over DRAIN_MAX_BYTES: refused without reading anything
    guard([(b"content-length", str(DRAIN_MAX_BYTES + 1).encode())], None)
    assert reads == [] and calls == []


def test_guard_passes_small_bodies_unchanged() -> None:
    seen = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        message = await receive()
        seen.append(message["body"])

    chunks = [b"ab", b"cd", b"e"]

    async def receive() -> dict:
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message) -> None:  # noqa: ANN001
        raise AssertionError("nothing to send")

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"host", b"localhost")]}
    asyncio.run(Guard(app, max_bytes=5, limit_text="5 B")(scope, receive, send))
    assert seen == [b"abcde"]


def _attention_block_chain(n_red: int, n_green: int, tau: float = 10.0) -> tuple[float, float]:
    """S² of the two-colour image, by hand: a red position's weight on each red and green one.

    With the class operator, two positions of one colour have cosine 1 and positions of
    different colours cosine 0 (their weighted features are orthogonal), so a row of S has
    e^τ / Z on same-colour positions and 1 / Z on the others.
    """
    z_red = n_red * np.exp(tau) + n_green
    z_green = n_green * np.exp(tau) + n_red
    a, b = np.exp(tau) / z_red, 1.0 / z_red  # red -> red, red -> green
    c, d = np.exp(tau) / z_green, 1.0 / z_green  # green -> green, green -> red
    return n_red * a * a + n_green * b * d, n_red * a * b + n_green * b * c


def test_sa_cam_attention_row_of_a_clicked_position(client) -> None:  # noqa: ANN001
    out = post_explain(client, red_green_png(12), methods=["sa-cam", "grad-cam"]).json()
    sa = out["maps"][0]
    assert sa["attention"] == {"layer": "1", "grid": [16, 16]}
    assert out["maps"][1].get("attention") is None
    rid = out["result_id"]
    r = client.get(f"/api/results/{rid}/attention", params={"row": 3, "col": 2})
    assert r.status_code == 200
    att = r.json()
    assert att["grid"] == [16, 16] and att["position"] == [3, 2] and att["layer"] == "1"
    values = np.array(att["values"])
    to_red, to_green = _attention_block_chain(192, 64)
    assert np.allclose(values[:, :12], to_red, atol=1e-6)
    assert np.allclose(values[:, 12:], to_green, atol=1e-6)
    assert values.sum() == pytest.approx(1.0, abs=1e-4)
    assert att["max"] == pytest.approx(to_red, rel=1e-5)
    assert decode_data_url(att["overlay"]).shape == (16, 16, 3)

    outside = client.get(f"/api/results/{rid}/attention", params={"row": 16, "col": 0})
    assert outside.status_code == 400 and "outside the 16×16" in outside.json()["detail"]
    no_att = client.get(
        f"/api/results/{rid}/attention", params={"row": 0, "col": 0, "method": "grad-cam"}
    )
    assert no_att.status_code == 400 and "no attention data" in no_att.json()["detail"]
    gone = client.get("/api/results/0123abcd/attention", params={"row": 0, "col": 0})
    assert gone.status_code == 404


def test_jobs_explain_and_curves(client) -> None:  # noqa: ANN001
    form = {"methods": ["grad-cam"]}
    files = {"image": ("x.png", red_green_png(12), "image/png")}
    r = client.post("/api/jobs/explain", files=files, data=form)
    assert r.status_code == 202 and r.json()["kind"] == "explain"
    info = wait_job(client, r.json()["job_id"])
    assert info["status"] == "done" and info["progress"] == 1.0
    rid = info["result"]["result_id"]

    r = client.post("/api/jobs/curves", json={"result_id": rid, "steps": 8})
    assert r.status_code == 202
    info = wait_job(client, r.json()["job_id"])
    assert info["status"] == "done", info
    res = info["result"]
    # 256 pixels in 8 steps of 32: points after 0, 32, ..., 256 pixels
    assert res["fractions"] == [k / 8 for k in range(9)]
    (m,) = res["methods"]
    # deletion removes the 192 red pixels (map 1) first, then the 64 green ones (map 0);
    # a removed pixel is 0 (black), which adds nothing to the mean colours
    expected = []
    for k in range(0, 257, 32):
        red, green = max(0, 192 - k), 64 - max(0, k - 192)
        expected.append(softmax(colour_logits(red / 256, green / 256, 0.0))[0])
    assert np.allclose(m["deletion"]["curve"], expected, atol=2e-6)
    trapezoids = sum((expected[k] + expected[k + 1]) / 2 / 8 for k in range(8))
    assert m["deletion"]["auc"] == pytest.approx(trapezoids, abs=1e-5)
    # insertion ends on the whole image again
    assert m["insertion"]["curve"][-1] == pytest.approx(expected[0], abs=2e-6)

    bad = client.post("/api/jobs/curves", json={"result_id": rid, "methods": ["cam"]})
    assert bad.status_code == 400 and "no map for cam" in bad.json()["detail"]
    gone = client.post("/api/jobs/curves", json={"result_id": "feed", "steps": 8})
    assert gone.status_code == 404
    assert client.get("/api/jobs/feedbeef").status_code == 404
    assert client.delete("/api/jobs/feedbeef").status_code == 404


def test_page_and_static_files_are_served_with_a_strict_policy(client) -> None:  # noqa: ANN001
    page = client.get("/")
    assert page.status_code == 200 and "<title>sacam serve</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.content) > 500
    # nothing on the page refers to another host
    for text in (
        page.text,
        client.get("/static/app.js").text,
        client.get("/static/style.css").text,
    ):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/docs").status_code == 404  # the interactive docs would use a CDN
    assert client.get("/openapi.json").json()["paths"]["/api/explain"]["post"]


def test_the_model_is_left_as_it_was(loaded) -> None:  # noqa: ANN001
    model = loaded.model
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with TestClient(create_app(loaded), base_url=LOCAL) as c:
        assert post_explain(c, red_green_png(), methods=["sa-cam", "score-cam"]).status_code == 200
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
