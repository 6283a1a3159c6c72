"""Benchmarks of a detector and a segmenter: one map per annotated object, scored per object.

The detector is :func:`tests.support.detectors.trained_detector` (coloured squares, class
1 reddish, class 2 bluish, 64×64), the segmenter :func:`tests.support.segmenters.
trained_segmenter` (a red and a blue square, 32×32); their datasets are scenes written
here as PNG files with the true boxes or class masks. Each dataset also holds one object
the model cannot find (an annotation on a plain background): it must be counted as
missed, not scored and not dropped. The pointing game runs with no tolerance, so its
random baseline is the object's share of the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sacam.cli import main
from sacam.errors import SacamError
from sacam.evaluation.config import BenchmarkConfig
from sacam.evaluation.runner import run_benchmark
from sacam.evaluation.runner.task_data import read_detection, read_images
from tests.support.segmenters import square_scenes
from tests.support.task_sets import (
    DETECTOR,
    SEGMENTER,
    detection_config,
    result_rows,
    save_png,
    write_detection_set,
    write_segmentation_scenes,
)

PLAIN = ["--mean", "0", "0", "0", "--std", "1", "1", "1"]


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """12 scenes of one or two squares and a plain grey image with one (absent) object."""
    root = tmp_path_factory.mktemp("detection-set")
    return root, write_detection_set(root, 12)


def _config(data: Path, out: Path, **changes: Any) -> BenchmarkConfig:
    return detection_config(data, out, **({"steps": 16} | changes))


def _mean(rows: list[dict[str, str]], method: str, column: str) -> float:
    values = [float(r[column]) for r in rows if r["method"] == method and r[column] != ""]
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def detection_run(detection_set, tmp_path_factory) -> tuple[dict[str, Any], list[dict[str, str]]]:
    data, _ = detection_set
    out = tmp_path_factory.mktemp("detection-run")
    summary = run_benchmark(_config(data, out), progress=False)
    return summary, result_rows(out)


def test_one_row_per_object_and_method_and_the_missed_counted(detection_set, detection_run):
    _, n_objects = detection_set
    summary, rows = detection_run
    assert len(rows) == 2 * n_objects
    for method in ("grad-cam", "random"):
        mine = [r for r in rows if r["method"] == method]
        assert len(mine) == n_objects
        plain = [r for r in mine if r["image"] == "plain.png"]
        assert len(plain) == 1 and plain[0]["status"] == "missed"
        assert plain[0]["pointing_game"] == plain[0]["deletion"] == ""
        missed = sum(r["status"] == "missed" for r in mine)
        assert summary["table"][method]["missed"] == missed
        assert summary["table"][method]["explained"] == n_objects - missed
    assert summary["objects"] == n_objects and 1 <= summary["missed"] <= 3
    assert (detection_run[0]["values"]) == [
        "pointing_game",
        "energy_pointing_game",
        "deletion",
        "insertion",
    ]


def test_grad_cam_points_at_the_detected_objects(detection_run):
    summary, rows = detection_run
    baseline = _mean(rows, "grad-cam", "pointing_baseline")  # box area / image area
    explained = [r for r in rows if r["status"] == "explained"]
    assert all(0.0 <= float(r["energy_pointing_game"]) <= 1.0 for r in explained)
    assert all(float(r["iou"]) >= 0.5 and float(r["score"]) >= 0.5 for r in explained)
    grad = summary["table"]["grad-cam"]
    assert baseline < 0.1
    assert grad["pointing_game"]["mean"] >= 0.7 > 5 * baseline
    assert grad["energy_pointing_game"]["mean"] > 5 * _mean(rows, "grad-cam", "energy_baseline")
    assert summary["table"]["random"]["pointing_game"]["mean"] < 0.3


def test_deleting_grad_cams_pixels_first_drops_the_detection_faster(detection_run):
    summary, _ = detection_run
    grad, rand = summary["table"]["grad-cam"], summary["table"]["random"]
    assert grad["deletion"]["mean"] + grad["deletion"]["ci95"] < rand["deletion"]["mean"]
    assert 0.0 <= grad["insertion"]["mean"] <= 1.0


def test_an_annotation_file_with_labels_by_name_or_json(tmp_path) -> None:
    (tmp_path / "a.json").write_text('{"x.png": [{"label": "Blue", "box": [1, 2, 5, 6]}]}')
    assert read_detection(tmp_path / "a.json", ["background", "red", "blue"]) == {
        "x.png": [(2, (1.0, 2.0, 5.0, 6.0))]
    }
    (tmp_path / "b.csv").write_text("file,x0,y0,x1,y1\nx.png,1,2,5,6\n")
    with pytest.raises(SacamError, match="label missing"):
        read_detection(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("file,label,x0,y0,x1,y1\nx.png,1,5,2,1,6\n")
    with pytest.raises(SacamError, match=r"line 2: box .* needs x1 > x0"):
        read_detection(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("file,label,x0,y0,x1,y1\n../x.png,1,1,2,5,6\n")
    with pytest.raises(SacamError, match="outside DATA_DIR"):
        read_images(tmp_path, "detection", tmp_path / "d.csv")


def test_metrics_that_do_not_apply_are_refused(detection_set, tmp_path) -> None:
    data, _ = detection_set
    with pytest.raises(SacamError, match="confidence does not apply to --task detection"):
        run_benchmark(_config(data, tmp_path, metrics=["confidence"]), progress=False)


def test_sacam_benchmark_task_detection(detection_set, tmp_path, capsys) -> None:
    data, _ = detection_set
    out = tmp_path / "run"
    args = ["benchmark", str(data), "--model", DETECTOR, "--task", "detection", "--size", "64"]
    args += [*PLAIN, "--methods", "grad-cam", "--layer", "backbone", "--tolerance", "0"]
    args += ["--metrics", "pointing", "energy_pointing", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = result_rows(out)
    assert len(rows) == detection_set[1]
    missed = sum(r["status"] == "missed" for r in rows)
    assert f"{missed} missed" in printed and "| grad-cam |" in printed
    assert "deletion" not in rows[0]
    assert _mean(rows, "grad-cam", "pointing_game") >= 0.7


def test_a_yolo_style_detector_read_by_the_dense_options(detection_set, tmp_path, capsys):
    data, n_objects = detection_set
    # the dense output's class columns count from 0: class 1 is column 0, class 2 column 1
    lines = (data / "annotations.csv").read_text().splitlines()
    shifted = [lines[0]]
    for line in lines[1:]:
        file, label, *box = line.split(",")
        shifted.append(",".join([file, str(int(label) - 1), *box]))
    (tmp_path / "dense.csv").write_text("\n".join(shifted) + "\n")
    args = ["benchmark", str(data), "--model", "tests.support.task_models:dense_detector"]
    args += ["--annotations", str(tmp_path / "dense.csv")]
    args += ["--task", "detection", "--box-format", "xyxy", "--size", "64", *PLAIN]
    args += ["--methods", "grad-cam", "--layer", "net.backbone", "--tolerance", "0"]
    args += ["--metrics", "pointing", "deletion", "--steps", "8", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    rows = result_rows(tmp_path / "run")
    assert len(rows) == n_objects
    explained = [r for r in rows if r["status"] == "explained"]
    assert len(explained) >= n_objects - 3
    assert _mean(rows, "grad-cam", "pointing_game") >= 0.7
    assert all(0.0 <= float(r["deletion"]) <= 1.0 for r in explained)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--objectness"], "--objectness apply to --task detection only"),
        (["--min-iou", "0.3"], "--min-iou apply to --task detection or segmentation"),
        (["--task", "detection", "--metrics", "deletion", "sanity"], "sanity does not apply"),
        (["--task", "detection", "--engine", "ray"], "--engine ray run classifiers only"),
    ],
)
def test_bad_task_options_say_what_to_do(detection_set, tmp_path, capsys, extra, message):
    data, _ = detection_set
    args = ["benchmark", str(data), "--model", DETECTOR, "--size", "64", *PLAIN, *extra]
    code = main([*args, "--out", str(tmp_path / "run")])
    assert code != 0
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def segmentation_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """8 scenes with a red and a blue square and their masks; a dark image with one object."""
    root = tmp_path_factory.mktemp("segmentation-set")
    lines = write_segmentation_scenes(root, 8, seed=5)
    save_png(torch.zeros(3, 32, 32), root / "dark.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 2
    Image.fromarray(mask, mode="L").save(root / "dark-mask.png")
    lines.append("dark.png,dark-mask.png")
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    return root, 2 * 8 + 1  # two classes in each scene, one object in the dark image


def test_segmentation_benchmark_scores_each_class_in_its_mask(segmentation_set, tmp_path):
    data, n_objects = segmentation_set
    config = _config(
        data, tmp_path, model=SEGMENTER, image_size=32, task="segmentation", layer=["features"]
    )
    summary = run_benchmark(config, progress=False)
    rows = result_rows(tmp_path)
    assert len(rows) == 2 * n_objects
    dark = [r for r in rows if r["image"] == "dark.png"]
    assert [r["status"] for r in dark] == ["missed", "missed"] and summary["missed"] == 1
    grad, rand = summary["table"]["grad-cam"], summary["table"]["random"]
    baseline = _mean(rows, "grad-cam", "pointing_baseline")  # 8×8 of 32×32: 1/16
    assert baseline == pytest.approx(1 / 16)
    assert grad["pointing_game"]["mean"] >= 0.9 > 5 * baseline
    energy_baseline = _mean(rows, "grad-cam", "energy_baseline")
    assert grad["energy_pointing_game"]["mean"] > 0.5 > 5 * energy_baseline
    assert grad["deletion"]["mean"] + grad["deletion"]["ci95"] < rand["deletion"]["mean"]


def test_sacam_benchmark_task_segmentation(segmentation_set, tmp_path, capsys) -> None:
    data, n_objects = segmentation_set
    args = ["benchmark", str(data), "--model", SEGMENTER, "--task", "segmentation"]
    args += ["--size", "32", *PLAIN, "--methods", "grad-cam", "--layer", "features"]
    args += ["--metrics", "pointing", "--tolerance", "0", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "1 missed" in capsys.readouterr().out
    rows = result_rows(tmp_path / "run")
    assert len(rows) == n_objects
    assert _mean(rows, "grad-cam", "pointing_game") >= 0.9


def test_instances_each_get_their_own_map(tmp_path) -> None:
    """Two red squares (one class, two instances) and scenes' squares as instances.

    Each instance is matched alone. Layer-CAM keeps the target's gradient where it is, so
    each twin's map lies on that twin; Grad-CAM pools the gradient into one weight per
    channel, so its map of either twin lights both alike (about half the energy on each).
    """
    x, y = square_scenes(4, seed=9)
    two = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3)) * 0.2
    two[:, 0:8, 0:8] = two[:, 24:32, 24:32] = 0.0
    two[0, 0:8, 0:8] = two[0, 24:32, 24:32] = 1.0
    rows = ["file,mask,label"]
    for i in range(len(x)):
        save_png(x[i], tmp_path / f"s{i}.png")
        for label in (1, 2):
            Image.fromarray(((y[i] == label).numpy() * 255).astype(np.uint8)).save(
                tmp_path / f"s{i}-{label}.png"
            )
            rows.append(f"s{i}.png,s{i}-{label}.png,{label}")
    save_png(two, tmp_path / "two.png")
    for k, (r, c) in enumerate([(0, 0), (24, 24)]):
        mask = np.zeros((32, 32), np.uint8)
        mask[r : r + 8, c : c + 8] = 255
        Image.fromarray(mask).save(tmp_path / f"two-{k}.png")
        rows.append(f"two.png,two-{k}.png,1")
    (tmp_path / "annotations.csv").write_text("\n".join(rows) + "\n")
    config = _config(
        tmp_path,
        tmp_path / "out",
        model=SEGMENTER,
        image_size=32,
        task="segmentation",
        layer=["features"],
        methods=["grad-cam", "layer-cam"],
        metrics=["pointing", "energy_pointing"],
    )
    summary = run_benchmark(config, progress=False)
    results = result_rows(tmp_path / "out")
    assert len(results) == 2 * (2 * len(x) + 2) and summary["missed"] == 0
    pair = [r for r in results if r["image"] == "two.png" and r["method"] == "layer-cam"]
    # each instance is found alone (IoU 1 with its own square, not 1/2 with the pair) ...
    assert [float(r["iou"]) for r in pair] == [1.0, 1.0]
    # ... and its Layer-CAM map has most of its energy on it, not on its twin
    assert all(float(r["energy_pointing_game"]) > 0.8 for r in pair)
    assert [float(r["pointing_game"]) for r in pair] == [1.0, 1.0]
    pooled = [r for r in results if r["image"] == "two.png" and r["method"] == "grad-cam"]
    assert all(0.3 < float(r["energy_pointing_game"]) < 0.7 for r in pooled)
    for method in ("grad-cam", "layer-cam"):
        assert summary["table"][method]["pointing_game"]["mean"] >= 0.8
