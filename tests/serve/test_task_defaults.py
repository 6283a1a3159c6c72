"""One default method explains detections: the Python API, ``sacam explain`` and the web app.

Each entry point is asked without naming a method, and each must answer with
:data:`sacam.detection.DEFAULT_METHOD`, Grad-CAM (the detection tutorial gives the
measurements behind the choice).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sacam import detection
from sacam.cli import main
from sacam.models import load_model
from sacam.preprocess import Preprocess
from sacam.registry import list_methods
from tests.support.detectors import scenes
from tests.support.serve import require
from tests.support.task_models import detector

require("fastapi")
require("python_multipart")
require("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from sacam.serve import create_app  # noqa: E402

PLAIN = ["--size", "64", "--mean", "0", "0", "0", "--std", "1", "1", "1"]
METHOD_OF_LINE = re.compile(r"^\S+ #\d+: .+ box \[[^\]]+\], (\S+) at backbone, ")


def test_the_default_is_grad_cam_and_registered() -> None:
    assert detection.DEFAULT_METHOD == "grad-cam"
    assert detection.DEFAULT_METHOD in list_methods()


@pytest.mark.parametrize("function", [detection.explain, detection.explain_detections])
def test_the_python_api_defaults_to_it(function: object) -> None:
    method = inspect.signature(function).parameters["method"]  # type: ignore[arg-type]
    assert method.default == detection.DEFAULT_METHOD


def test_the_python_api_explains_with_it() -> None:
    net = detector()
    image = scenes(1, seed=7, objects=(2,), distinct=True)[0][0]
    target = detection.ClassTarget(label=1)
    unnamed = detection.explain(net, image[None], target, layer="backbone").maps
    assert torch.equal(
        unnamed, detection.explain(net, image[None], target, "grad-cam", "backbone").maps
    )
    assert not torch.equal(
        unnamed, detection.explain(net, image[None], target, "sa-cam", "backbone").maps
    )


def test_the_command_line_defaults_to_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = scenes(1, seed=7, objects=(2,), distinct=True)[0][0]
    arr = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "scene.png")
    args = ["explain", str(tmp_path / "scene.png"), "--model", "tests.support.task_models:detector"]
    args += ["--task", "detection", *PLAIN, "--layer", "backbone", "--out", str(tmp_path)]
    assert main(args) == 0
    text = capsys.readouterr().out
    methods = [m[1] for line in text.splitlines() if (m := METHOD_OF_LINE.match(line))]
    assert methods and set(methods) == {detection.DEFAULT_METHOD}, text
    assert (tmp_path / f"scene_detections_{detection.DEFAULT_METHOD}.png").is_file()


def test_the_web_app_preselects_it() -> None:
    pre = Preprocess(size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    loaded = load_model(detector(), preprocess=pre, class_names=["background", "red", "blue"])
    with TestClient(create_app(loaded, task="detection"), base_url="http://127.0.0.1") as c:
        assert c.get("/api/methods").json()["default"] == detection.DEFAULT_METHOD
