"""Shared pieces of the web app tests: dependency checks, a tiny model, a live server."""

from __future__ import annotations

import importlib
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sacam.models import LoadedModel, load_model
from sacam.preprocess import Preprocess
from tests.support.nets import colour_net

COLOURS = ["red", "green", "blue", "dark", "bright"]


def require(name: str, extras: str = "serve,serve-test") -> ModuleType:
    """Import an optional test dependency (by default one of the web app's).

    Without its extras the tests are skipped on a developer's machine, but under CI
    (``CI`` set, as ``.ci/run`` does) a missing piece fails the run.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        message = f"{name} is not installed ({exc}): pip install -e '.[{extras}]'"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


def colour_model() -> LoadedModel:
    """The hand-weighted colour classifier (tests/conftest.py) on 16×16 raw pixels.

    Its logits for mean channel values ``r, g, b`` (of non-negative pixels) are
    ``3r - g - b``, ``-r + 3g - b``, ``-r - g + 3b``, ``-r - g - b - 3``, ``r + g + b - 1``.
    """
    return load_model(
        colour_net(),
        preprocess=Preprocess(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        class_names=COLOURS,
    )


def colour_logits(r: float, g: float, b: float) -> np.ndarray:
    """The colour classifier's logits, written out by hand from its weights."""
    return np.array([3 * r - g - b, -r + 3 * g - b, -r - g + 3 * b, -r - g - b - 3, r + g + b - 1])


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax of a vector."""
    e = np.exp(z - z.max())
    return e / e.sum()


def red_green_png(red_columns: int = 12, size: int = 16) -> bytes:
    """A ``size``×``size`` PNG: the left ``red_columns`` columns red, the rest green."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:, :red_columns, 0] = 255
    arr[:, red_columns:, 1] = 255
    return png_bytes(Image.fromarray(arr))


def png_bytes(image: Image.Image) -> bytes:
    """An image encoded as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_data_url(url: str) -> np.ndarray:
    """The pixels of a ``data:image/png;base64,...`` URL."""
    import base64

    head, _, data = url.partition(",")
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


class SlowNet(nn.Module):
    """A small CNN (512 channels) whose forward pass sleeps ``delay`` seconds per call."""

    def __init__(self, delay: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 512, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 6))
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.head(self.features(x))


def free_port_socket() -> socket.socket:
    """A socket bound to a free port on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def live_server(app: object) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yield its base URL."""
    uvicorn = require("uvicorn")
    sock = free_port_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


class GateNet(nn.Module):
    """The colour classifier behind a gate: while ``gate`` is clear, a forward pass waits.

    Lets a test hold a job inside the model for as long as it likes, without timing.
    ``calls`` counts the forward passes that got through; with ``open_calls`` set, the
    gate closes by itself once that many passes have gone through.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = colour_net()
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.open_calls: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.open_calls is not None and self.calls >= self.open_calls:
            self.gate.clear()
            self.open_calls = None
        if not self.gate.wait(120):
            raise RuntimeError("the test never opened the gate")
        self.calls += 1
        return self.net(x)


def gated_model() -> LoadedModel:
    """:func:`colour_model` with its network behind a :class:`GateNet`."""
    return load_model(
        GateNet(),
        preprocess=Preprocess(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        class_names=COLOURS,
    )


def wait_until(condition: object, what: str, timeout: float = 300.0) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after ``timeout`` s.

    The timeout only ends a wait that would never end: it is long enough for a loaded
    machine, so a test fails on what it checks, not on the machine's speed.
    """
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def wait_job(client: Any, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    """Poll ``GET /api/jobs/{job_id}`` with a test client until the job ends; its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if info["status"] in ("done", "error", "cancelled"):
            return info
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def run_job(client: Any, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """Post ``body`` to the job route ``route``, wait, and return the finished job's result."""
    response = client.post(route, json=body)
    assert response.status_code == 202, response.text
    info = wait_job(client, response.json()["job_id"])
    assert info["status"] == "done", info
    result: dict[str, Any] = info["result"]
    return result


CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
"""axe-core (MPL-2.0, its licence beside it), the accessibility checker the browser tests run."""


def sync_playwright():  # noqa: ANN201
    """Playwright's ``sync_playwright``, failing (never skipping) when it or chromium is missing.

    The browser tests drive Debian's chromium (``apt-get install chromium``); they never
    download a browser.
    """
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.fail(
            "Playwright is not installed: pip install -e '.[serve-test]' (the browser tests "
            "are part of the suite)",
            pytrace=False,
        )
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install chromium (Debian's package; the browser "
            "tests are part of the suite)",
            pytrace=False,
        )
    return start


def serious_accessibility_problems(page: object) -> list[str]:
    """axe-core's serious and critical violations on ``page`` (its context must bypass CSP)."""
    page.add_script_tag(path=str(AXE))  # type: ignore[attr-defined]
    found = page.evaluate(  # type: ignore[attr-defined]
        "async () => (await axe.run(document)).violations"
        ".filter(v => ['serious', 'critical'].includes(v.impact))"
        ".map(v => `${v.id}: ${v.help} (${v.nodes.map(n => n.target.join(' ')).join(', ')})`)"
    )
    return list(found)


@contextmanager
def other_origin_page(html: str) -> Iterator[str]:
    """Serve ``html`` at ``/`` from another port of 127.0.0.1 (another origin); yield its URL."""
    import http.server

    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
