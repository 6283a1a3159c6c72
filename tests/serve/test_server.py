"""The web app behind a real uvicorn server on 127.0.0.1: responsiveness and cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from sacam.models import load_model
from sacam.preprocess import Preprocess
from tests.support.serve import SlowNet, live_server, red_green_png, require

require("fastapi")
httpx = require("httpx")
from sacam.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def slow():  # noqa: ANN201
    # 0.1 s per forward pass: Score-CAM's 512 masked inputs, 64 at a time, take about 1 s
    # (and its first call measures batch sizes for about 1.6 s more)
    return load_model(
        SlowNet(delay=0.1),
        preprocess=Preprocess(size=16),
        class_names=[f"class{i}" for i in range(6)],
    )


def form(methods: list[str]) -> dict:
    return {
        "files": {"image": ("x.png", red_green_png(), "image/png")},
        "data": {"methods": methods},
    }


def test_health_answers_while_score_cam_runs(slow) -> None:  # noqa: ANN001
    with live_server(create_app(slow)) as base, httpx.Client(base_url=base, timeout=120) as c:
        answer = {}
        explain = threading.Thread(
            target=lambda: answer.update(r=c.post("/api/explain", **form(["score-cam"])))
        )
        explain.start()
        deadline = time.monotonic() + 300  # a hang guard, not a speed test
        while c.get("/api/health").json()["jobs_pending"] == 0:
            assert time.monotonic() < deadline and explain.is_alive()
            time.sleep(0.01)
        for _ in range(5):
            health = c.get("/api/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
        # all five answers came while the Score-CAM request was still being computed
        assert explain.is_alive()
        assert c.get("/api/health").json()["jobs_pending"] == 1
        explain.join(120)
        r = answer["r"]
        assert r.status_code == 200, r.text
        assert [m["method"] for m in r.json()["maps"]] == ["score-cam"]


def test_progress_and_cancel_of_a_long_job(slow) -> None:  # noqa: ANN001
    model = slow.model
    flags = [p.requires_grad for p in model.parameters()]
    with live_server(create_app(slow)) as base, httpx.Client(base_url=base, timeout=60) as c:
        job = c.post("/api/jobs/explain", **form(["grad-cam", "score-cam"])).json()
        assert job["status"] == "queued"
        seen = []
        deadline = time.monotonic() + 300  # a hang guard, not a speed test
        while True:
            info = c.get(f"/api/jobs/{job['job_id']}").json()
            seen.append(info["progress"])
            if (
                info["status"] == "running"
                and info["stage"] == "score-cam"
                and info["progress"] > 0.5
            ):
                break
            assert info["status"] in ("queued", "running") and time.monotonic() < deadline
            time.sleep(0.01)
        assert seen == sorted(seen) and 0 < seen[-1] < 1
        cancelled = c.delete(f"/api/jobs/{job['job_id']}")
        assert cancelled.status_code == 200
        while info["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
            info = c.get(f"/api/jobs/{job['job_id']}").json()
        assert info["status"] == "cancelled" and info.get("result") is None
        # the model is as it was: no hooks, flags restored, still in eval mode
        for m in model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks
        assert [p.requires_grad for p in model.parameters()] == flags
        assert not model.training
        # and the model thread goes on with the next request
        after = c.post("/api/explain", **form(["grad-cam"]))
        assert after.status_code == 200


def test_declared_oversized_upload_is_refused_over_http(slow) -> None:  # noqa: ANN001
    # ten uploads: a server that answers while the client is still sending, and closes
    # with the rest unread, gets reset connections (about one in five here) instead of
    # a 413 the client can read
    with live_server(create_app(slow, max_upload_mb=1)) as base:
        body = b"\x89PNG" + bytes(3 * 1024 * 1024)
        for _ in range(10):
            r = httpx.post(
                f"{base}/api/explain", files={"image": ("big.png", body, "image/png")}, timeout=60
            )
            assert r.status_code == 413
            assert "over the limit of 1 MB" in r.json()["detail"]


def test_streamed_oversized_upload_is_refused_over_http(slow) -> None:  # noqa: ANN001
    # no Content-Length (chunked): the limit is found while the body streams in
    def chunks():  # noqa: ANN202
        for _ in range(48):
            yield bytes(64 * 1024)  # 3 MB in all

    with live_server(create_app(slow, max_upload_mb=1)) as base:
        for _ in range(5):
            r = httpx.post(
                f"{base}/api/explain",
                content=chunks(),
                headers={"content-type": "multipart/form-data; boundary=x"},
                timeout=60,
            )
            assert r.status_code == 413
            assert "over the limit of 1 MB" in r.json()["detail"]
