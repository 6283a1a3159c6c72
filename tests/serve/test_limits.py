"""What keeps ``sacam serve`` safe to leave running: bounded queue, lengths, hosts, clients.

Each test here failed against the app before these bounds existed: the queue took any
number of jobs and kept each decoded upload, a 1 MB class name was parsed on the event
loop and echoed back whole, any ``Host`` and ``Origin`` was served, results were shared
by all clients (16 in all, so another client's requests evicted yours), and a client
that gave up waiting left its request running to the end.
"""

from __future__ import annotations

import base64
import gc
import io
import threading

import pytest
from PIL import Image

from tests.support.serve import (
    gated_model,
    live_server,
    png_bytes,
    red_green_png,
    require,
    wait_until,
)

require("fastapi")
httpx = require("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from sacam.serve import create_app  # noqa: E402
from sacam.serve.results import ResultStore, StoredResult  # noqa: E402

LOCAL = "http://127.0.0.1"


def upload(png: bytes, methods: tuple[str, ...] = ("grad-cam",), **fields: str) -> dict:
    return {
        "files": {"image": ("x.png", png, "image/png")},
        "data": {"methods": list(methods), **fields},
    }


# ---------------------------------------------------------------------- the queue
def test_a_full_queue_answers_429_and_holds_no_decoded_picture() -> None:
    loaded = gated_model()
    net = loaded.model
    app = create_app(loaded, max_queue=2)
    big = png_bytes(Image.new("RGB", (2000, 1500), (200, 20, 20)))  # 9 MB decoded
    with TestClient(app, base_url=LOCAL) as c:
        net.gate.clear()  # the next job stops inside the model
        first = c.post("/api/jobs/explain", **upload(red_green_png())).json()
        wait_until(
            lambda: c.get(f"/api/jobs/{first['job_id']}").json()["status"] == "running",
            "the first job to start",
        )
        waiting = [c.post("/api/jobs/explain", **upload(big)) for _ in range(2)]
        assert [r.status_code for r in waiting] == [202, 202]
        assert [r.json()["queue_position"] for r in waiting] == [1, 2]
        refused = c.post("/api/jobs/explain", **upload(big))
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "busy" in refused.json()["detail"]
        # the waiting jobs hold the model's 16 x 16 input, not the 2000 x 1500 picture
        gc.collect()
        objects = gc.get_objects()
        pictures = [o for o in objects if str(vars(type(o)).get("__module__")).startswith("PIL.")]
        assert [p for p in pictures if getattr(p, "size", None) == (2000, 1500)] == []
        # a cancelled waiting job lets the next request in
        c.delete(f"/api/jobs/{waiting[1].json()['job_id']}")
        assert c.post("/api/jobs/explain", **upload(red_green_png())).status_code == 202
        net.gate.set()
        health = c.get("/api/health").json()
        assert health["max_queue"] == 2
        wait_until(lambda: c.get("/api/health").json()["jobs_pending"] == 0, "the queue to empty")


# ---------------------------------------------------------------------- abandoned requests
def test_a_request_whose_client_gives_up_is_cancelled() -> None:
    loaded = gated_model()
    net = loaded.model
    app = create_app(loaded)
    worker = app.state.serve.worker
    with live_server(app) as base:
        net.gate.clear()
        before = net.calls
        gave_up = threading.Event()

        def impatient() -> None:
            try:
                httpx.post(f"{base}/api/explain", **upload(red_green_png()), timeout=1.0)
            except httpx.TimeoutException:
                gave_up.set()

        caller = threading.Thread(target=impatient)
        caller.start()
        caller.join(60)
        assert gave_up.is_set()
        (job,) = [j for j in worker.jobs() if j.kind == "explain"]
        wait_until(job.cancel_event.is_set, "the server to notice the client left")
        net.gate.set()
        wait_until(lambda: job.status not in ("queued", "running"), "the job to stop")
        assert job.status == "cancelled"  # it did not run on to the end
        assert net.calls == before + 1  # only the pass it was in when the client left


# ---------------------------------------------------------------------- field lengths
@pytest.mark.parametrize(
    "fields",
    [
        {"target": "x" * 1_000_000},
        {"layer": "x" * 1_000_000},
        {"methods": ["x" * 1_000_000]},
        {"methods": ["grad-cam"] * 65},
    ],
)
def test_long_fields_are_refused_by_the_framework_without_an_echo(fields) -> None:  # noqa: ANN001
    with TestClient(create_app(gated_model()), base_url=LOCAL) as c:
        data = {"methods": ["grad-cam"], **fields}
        r = c.post(
            "/api/explain", files={"image": ("x.png", red_green_png(), "image/png")}, data=data
        )
        assert r.status_code == 422
        assert len(r.json()["detail"]) < 200 and "xxxxxxxxxx" not in r.text


def test_messages_quote_a_short_prefix_of_what_was_sent() -> None:
    with TestClient(create_app(gated_model()), base_url=LOCAL) as c:
        r = c.post("/api/explain", **upload(red_green_png(), layer="z" * 150))
        assert r.status_code == 400 and "unknown layer" in r.json()["detail"]
        assert "z" * 40 in r.text and "z" * 41 not in r.text
        long_id = c.post("/api/jobs/curves", json={"result_id": "f" * 100_000})
        assert long_id.status_code == 422 and len(long_id.text) < 300


# ---------------------------------------------------------------------- hosts and origins
def test_only_own_hosts_and_same_origin_writes_are_served() -> None:
    app = create_app(gated_model(), allowed_hosts=["cams.example"])
    with TestClient(app, base_url=LOCAL) as c:
        for host, status in [
            ("127.0.0.1:8000", 200),
            ("localhost", 200),
            ("[::1]:8000", 200),
            ("cams.example", 200),
            ("evil.example", 400),
            ("127.0.0.1.evil.example", 400),
            ("", 400),
        ]:
            r = c.get("/api/health", headers={"host": host})
            assert r.status_code == status, host
        assert "--allowed-host" in c.get("/", headers={"host": "evil.example"}).text
        png = red_green_png()
        for headers, status in [
            ({}, 200),  # curl, scripts: no Origin
            ({"origin": "http://127.0.0.1"}, 200),  # the page itself
            ({"origin": "http://127.0.0.1:9999"}, 403),  # another port is another origin
            ({"origin": "https://evil.example"}, 403),
            ({"origin": "null"}, 403),
            ({"sec-fetch-site": "cross-site"}, 403),
        ]:
            r = c.post("/api/explain", headers=headers, **upload(png))
            assert r.status_code == status, headers
        assert c.delete("/api/jobs/feed", headers={"origin": "http://x.test"}).status_code == 403


# ---------------------------------------------------------------------- each client's results
def test_each_browser_keeps_its_own_results() -> None:
    app = create_app(gated_model(), keep_results=2)
    with (
        TestClient(app, base_url=LOCAL) as alice,
        TestClient(app, base_url=LOCAL) as bob,
    ):
        mine = alice.post("/api/explain", **upload(red_green_png(), ("sa-cam",))).json()
        rid = mine["result_id"]
        assert alice.cookies.get("sacam_client") != bob.cookies.get("sacam_client")
        for _ in range(20):  # another browser's runs do not push Alice's result out
            assert bob.post("/api/explain", **upload(red_green_png())).status_code == 200
        row = {"row": 0, "col": 0}
        assert alice.get(f"/api/results/{rid}/attention", params=row).status_code == 200
        stolen = bob.get(f"/api/results/{rid}/attention", params=row)
        assert stolen.status_code == 404  # and Bob cannot read it
        for _ in range(2):  # Alice's own newer results do, beyond her two
            alice.post("/api/explain", **upload(red_green_png()))
        gone = alice.post("/api/jobs/curves", json={"result_id": rid})
        assert gone.status_code == 404
        assert "expired" in gone.json()["detail"] and "again" in gone.json()["detail"]


def _result(rid: str, mb: float) -> StoredResult:
    import torch

    x = torch.zeros(int(mb * 2**20 / 4))
    return StoredResult(rid, x, torch.zeros(0), 0, "layer", {}, {})


def test_the_memory_budget_takes_from_the_heaviest_client_first() -> None:
    store = ResultStore(per_client=8, max_bytes=10 * 2**20)
    store.put("alice", _result("a1", 2))
    store.put("bob", _result("b1", 3))
    store.put("bob", _result("b2", 3))
    store.put("bob", _result("b3", 3))  # 11 MB: Bob's oldest goes, not Alice's
    assert store.get("alice", "a1").id == "a1"
    with pytest.raises(Exception, match="expired"):
        store.get("bob", "b1")
    assert store.total_bytes() <= 10 * 2**20
    store.put("carol", _result("c1", 9))  # Bob holds the most and loses down to one
    assert store.get("carol", "c1").id == "c1"
    assert store.total_bytes() <= 11 * 2**20
    with pytest.raises(Exception, match="expired"):
        store.get("alice", "b3")  # ids are per client


# ---------------------------------------------------------------------- progress
def test_maps_come_as_each_method_ends_and_times_are_expected() -> None:
    loaded = gated_model()
    net = loaded.model
    with TestClient(create_app(loaded), base_url=LOCAL) as c:
        before = {m["name"]: m for m in c.get("/api/methods").json()["methods"]}
        # the start-up passes already give a rate: every method has an expected time
        assert all(m["expected_s"] is not None for m in before.values())
        grad, score = before["grad-cam"]["passes"], before["score-cam"]["passes"]
        assert score > grad
        net.open_calls = net.calls + 2  # classifying and Grad-CAM pass; Score-CAM waits
        job = c.post("/api/jobs/explain", **upload(red_green_png(), ("grad-cam", "score-cam")))
        job_id = job.json()["job_id"]
        wait_until(lambda: not net.gate.is_set(), "Score-CAM to reach the model")
        info = c.get(f"/api/jobs/{job_id}").json()
        assert info["status"] == "running" and info["stage"] == "score-cam"
        assert [m["method"] for m in info["partial"]["maps"]] == ["grad-cam"]
        # planned: 1 pass to classify, then each method's passes, a finished stage at
        # the passes it made (Grad-CAM: 1 of the 2 planned, its layer probe being known);
        # done: the two passes
        try:
            assert info["passes_planned"] == 1 + 1 + score
            assert info["passes_done"] == 2
            assert info["progress"] == pytest.approx(2 / info["passes_planned"], abs=1e-4)
        finally:
            net.gate.set()
        wait_until(lambda: c.get(f"/api/jobs/{job_id}").json()["status"] == "done", "the job")
        after = {m["name"]: m for m in c.get("/api/methods").json()["methods"]}
        assert after["score-cam"]["expected_s"] >= after["grad-cam"]["expected_s"]
        assert after["score-cam"]["expected_s"] > 0


def test_progress_counts_forward_passes_with_elapsed_and_estimate() -> None:
    # the page says "score-cam · 2 of 10 passes · 0.1 s elapsed · about 1 s left": the
    # passes are the images the model really took (counted here by a hook of the test's
    # own), not methods or uploads, and the plan ends equal to them
    loaded = gated_model()
    net = loaded.model
    rows: list[int] = []
    with TestClient(create_app(loaded), base_url=LOCAL) as c:
        planned = {m["name"]: m["passes"] for m in c.get("/api/methods").json()["methods"]}
        counting = net.register_forward_hook(lambda _m, _a, out: rows.append(out.shape[0]))
        try:
            net.open_calls = net.calls + 2  # classifying and Grad-CAM; Score-CAM waits
            job = c.post("/api/jobs/explain", **upload(red_green_png(), ("grad-cam", "score-cam")))
            job_id = job.json()["job_id"]
            wait_until(lambda: not net.gate.is_set(), "Score-CAM to reach the model")
            info = c.get(f"/api/jobs/{job_id}").json()
            net.gate.set()
            wait_until(lambda: c.get(f"/api/jobs/{job_id}").json()["status"] == "done", "the job")
            final = c.get(f"/api/jobs/{job_id}").json()
        finally:
            net.gate.set()
            counting.remove()
    assert info["stage"] == "score-cam" and info["passes_done"] == 2
    left = info["passes_planned"] - info["passes_done"]
    assert left == planned["score-cam"] > 2
    # the estimate: the passes left at this job's rate so far (both numbers rounded)
    rate = info["elapsed_s"] / info["passes_done"]
    assert info["eta_s"] == pytest.approx(rate * left, abs=0.06 + 0.005 * left)
    assert final["passes_done"] == final["passes_planned"] == sum(rows) > 2 + 6
    assert final["progress"] == 1.0 and final["eta_s"] is None


# ---------------------------------------------------------------------- thin pictures
def test_thin_pictures_are_explained_at_the_cost_of_a_square_one() -> None:
    with TestClient(create_app(gated_model()), base_url=LOCAL) as c:
        for size in ((1, 6000), (6000, 1)):
            png = png_bytes(Image.new("RGB", size, (250, 10, 10)))
            assert len(png) < 200  # a few bytes...
            r = c.post("/api/explain", **upload(png))
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["explained_class"]["name"] == "red"
            image = Image.open(io.BytesIO(base64.b64decode(out["image"].split(",")[1])))
            assert image.size == (16, 16)  # ...explained as the model's 16 x 16 view
