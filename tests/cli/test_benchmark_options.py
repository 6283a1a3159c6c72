"""``sacam benchmark`` with a model of your own: --class-names, --mean, --std, --size; and
the time lines, whose parts add up to the command's wall time."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sacam.cli import main
from sacam.evaluation import registry as metric_registry

MODEL = "tests.cli.test_benchmark_options:mean_net"
GREY = 128  # every pixel of the test images: 128/255 = 0.50196 on [0, 1]


def mean_net() -> nn.Module:
    """Two classes whose logits are ``[z, -z]``, ``z`` the mean of the normalised input.

    A 3×3 convolution of weights 1/27 (no padding, no bias) averages its window, so on a
    uniform image every output is ``z``; pooling and a fixed linear layer keep it.
    """
    conv = nn.Conv2d(3, 4, 3, bias=False)
    fc = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1 / 27)
        fc.weight.copy_(torch.tensor([[0.25] * 4, [-0.25] * 4]))
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


def _grey_folders(root: Path, classes: dict[str, int]) -> Path:
    """Class folders named by class name, holding ``n`` uniform grey images each."""
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = np.full((40, 40, 3), GREY, dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{name}{i}.png")
    return root


def _predictions(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def names_file(tmp_path: Path) -> Path:
    path = tmp_path / "names.txt"
    path.write_text("bright\n\ndark shade\n", encoding="utf-8")
    return path


def _bench(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "benchmark",
        str(data),
        "--model",
        MODEL,
        "--methods",
        "grad-cam",
        "--metrics",
        "confidence",
        "--size",
        "32",
        "--out",
        str(out),
        *extra,
    ]


def test_benchmark_normalises_with_the_given_mean_and_std(tmp_path, names_file, capsys) -> None:
    data = _grey_folders(tmp_path / "data", {"dark shade": 2})
    out = tmp_path / "out"
    mean_std = ["--mean", "0.75", "0.75", "0.75", "--std", "0.25", "0.25", "0.25"]
    assert main(_bench(data, out, "--class-names", str(names_file), *mean_std)) == 0
    z = (GREY / 255 - 0.75) / 0.25  # the normalised input: -0.992
    p_dark = 1 / (1 + np.exp(2 * z))  # softmax([z, -z])[1]
    rows = _predictions(out)
    assert len(rows) == 2
    for row in rows:
        assert row["top1"] == "1" and row["top1_name"] == "dark shade"
        assert row["label"] == "1" and row["label_name"] == "dark shade"  # by folder name
        assert float(row["prob"]) == pytest.approx(p_dark, abs=1e-5)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "dark shade" in report  # the run's settings name the classes
    run = json.loads((out / "run.json").read_text())
    assert run["mean"] == [0.75] * 3 and run["std"] == [0.25] * 3
    assert run["class_names"] == ["bright", "dark shade"]


def test_without_mean_and_std_the_imagenet_ones_apply(tmp_path, names_file) -> None:
    data = _grey_folders(tmp_path / "data", {"dark shade": 1})
    out = tmp_path / "out"
    assert main(_bench(data, out, "--class-names", str(names_file))) == 0
    z = (GREY / 255 - 0.485) / 0.229  # the red channel; green and blue are close
    row = _predictions(out)[0]
    assert row["top1"] == "0" and row["top1_name"] == "bright" and z > 0


def test_a_different_mean_on_resume_is_refused(tmp_path, capsys) -> None:
    data = _grey_folders(tmp_path / "data", {"0": 1})
    out = tmp_path / "out"
    assert main(_bench(data, out, "--mean", "0.5", "0.5", "0.5")) == 0
    capsys.readouterr()
    assert main(_bench(data, out, "--mean", "0.4", "0.5", "0.5")) == 2
    err = capsys.readouterr().err
    assert "mean" in err and "other settings" in err


def test_labels_csv_may_name_classes_and_a_wrong_name_is_refused(
    tmp_path, names_file, capsys
) -> None:
    data = _grey_folders(tmp_path / "data", {"x": 2})
    (data / "labels.csv").write_text("file,class_index\nx/x0.png,Bright\nx/x1.png,1\n")
    out = tmp_path / "out"
    assert main(_bench(data, out, "--class-names", str(names_file))) == 0
    assert [r["label_name"] for r in _predictions(out)] == ["bright", "dark shade"]
    (data / "labels.csv").write_text("file,class_index\nx/x0.png,grey\n")
    assert main(_bench(data, tmp_path / "out2", "--class-names", str(names_file))) != 0
    err = capsys.readouterr().err
    assert "'grey' is neither a class index" in err and "2 class names" in err


def test_preset_refuses_a_custom_mean(capsys, tmp_path) -> None:
    args = ["benchmark", "samples", "--preset", "paper", "--mean", "0.5", "0.5", "0.5"]
    assert main([*args, "--out", str(tmp_path / "p")]) == 2
    assert "drop --mean" in capsys.readouterr().err


def _slow_confidence(monkeypatch, pause: float) -> None:
    """Make the confidence metric take at least ``pause`` seconds per batch."""
    info = metric_registry.metric_info("confidence")

    def slow(batch: metric_registry.MetricBatch) -> metric_registry.MetricOutput:
        time.sleep(pause)
        return info.fn(batch)

    monkeypatch.setitem(metric_registry._METRICS, "confidence", dataclasses.replace(info, fn=slow))


def _seconds(text: str) -> list[float]:
    return [float(s) for s in re.findall(r"([\d.]+) s\b", text)]


def test_the_time_lines_add_up_to_the_wall_time(tmp_path, capsys, monkeypatch) -> None:
    pause = 0.3
    _slow_confidence(monkeypatch, pause)
    data = _grey_folders(tmp_path / "data", {"0": 2, "1": 1})
    args = _bench(data, tmp_path / "out", "--images-per-step", "2")
    t0 = time.perf_counter()
    assert main([*args, "--metrics", "confidence", "complexity"]) == 0
    outer = time.perf_counter() - t0
    lines = {
        line.split(":")[0]: line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("time:", "the rest:", "per image:"))
    }
    total, maps, rest = _seconds(lines["time"])[:3]
    # the printed total is rounded to 0.1 s, so it may exceed the measured wall time by 0.05
    assert total <= outer + 0.05 + 1e-9 and abs(total - maps - rest) <= 0.1 + 1e-9
    items = lines["the rest"].split(": ", 1)[1].split("; ")
    parts = {name: float(v) for v, name in (item.split(" s ", 1) for item in items)}
    assert {"confidence", "complexity", "loading", "predicting"} <= parts.keys()
    # two batches (2 images, then 1), each paused: the metric's own time holds both pauses
    assert parts["confidence"] >= 2 * pause
    assert abs(sum(parts.values()) - rest) <= 0.05 * (len(parts) + 1) + 1e-9
    each = _seconds(lines["per image"])
    assert "3 image(s) × 1 method(s)" in lines["time"]
    assert each[0] == pytest.approx(total / 3, abs=0.05)  # the total per image
    assert abs(each[0] - sum(each[1:])) <= 0.0005 * len(each) + 1e-9
    assert each[2] >= 2 * pause / 3  # confidence per image


def test_a_resumed_run_counts_only_its_own_time(tmp_path, capsys) -> None:
    data = _grey_folders(tmp_path / "data", {"0": 2})
    args = _bench(data, tmp_path / "out")
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0  # nothing left to compute
    text = capsys.readouterr().out
    assert "0 image(s) × 1 method(s) computed by this command" in text
    assert "per image:" not in text
    assert "time: " in text and " 0.0 s computing maps" in text


def test_an_engine_run_names_its_maps_and_metrics_as_one_part() -> None:
    from sacam.cli._benchmark import time_line
    from sacam.evaluation.runner.clock import ENGINE

    timing = {"seconds": {"loading": 2.0, "predicting": 1.0, ENGINE: 6.0}, "images": 4}
    text = time_line({"settings": {"images": 4}, "table": {"a": {}}, "timing": timing}, 10.0)
    first, rest, each = text.splitlines()
    assert first.startswith(f"time: 10.0 s = 6.0 s {ENGINE} + 4.0 s the rest, for 4 image(s)")
    assert rest.endswith(
        "2.0 s loading; 1.0 s predicting; 1.0 s other (waiting for decoded images, progress bars)"
    )
    assert (
        each == f"per image: 2.500 s = 1.500 s {ENGINE} + 1.000 s loading, predicting, "
        "writing and other"
    )
