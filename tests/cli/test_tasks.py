"""``sacam explain --task detection|segmentation`` on a detector trained here and a segmenter.

The detector is :func:`tests.support.detectors.trained_detector` (coloured squares, class
1 reddish, class 2 bluish), loaded as ``--model tests.support.task_models:detector``; its
images are 64×64 scenes written as PNG and read at ``--size 64`` with no normalisation.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from sacam.cli import main
from tests.support.detectors import scenes
from tests.support.serve import require

DETECTOR = "tests.support.task_models:detector"
PLAIN = ["--size", "64", "--mean", "0", "0", "0", "--std", "1", "1", "1"]
LINE = re.compile(r"^(\S+) #(\d+): (.+?) ([\d.]+) box \[([^\]]+)\], (\S+) at (\S+), [\d.]+ s")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list, list]:
    """Two scenes of two squares of distinct classes, as PNG files, with their true boxes."""
    folder = tmp_path_factory.mktemp("scenes")
    images, boxes, labels = scenes(2, seed=7, objects=(2,), distinct=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"scene{i}.png"
        arr = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths, boxes, labels


def _detections(text: str) -> list[tuple[str, int, str, float, list[float], str, str]]:
    found = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            box = [float(v) for v in m.group(5).split(",")]
            found.append(
                (m[1], int(m[2]), m[3], float(m[4]), box, m[6], m[7])  # type: ignore[arg-type]
            )
    return found


def _inside(cam: np.ndarray, box: list[float]) -> bool:
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return box[0] <= col < box[2] and box[1] <= row < box[3]


def test_each_detection_is_explained_on_its_object(pictures, tmp_path, capsys) -> None:
    paths, boxes, labels = pictures
    out = tmp_path / "out"
    args = ["explain", *paths, "--model", DETECTOR, "--task", "detection", *PLAIN]
    code = main([*args, "--method", "grad-cam", "--layer", "backbone", "--out", str(out)])
    assert code == 0
    found = _detections(capsys.readouterr().out)
    assert len(found) == 4  # two squares in each of two scenes
    for name, k, label, score, box, method, layer in found:
        i = int(name[-1])
        true = boxes[i][[int(label.split()[-1]) == lab for lab in labels[i].tolist()]][0]
        assert score >= 0.5 and method == "grad-cam" and layer == "backbone"
        assert max(abs(a - b) for a, b in zip(box, true.tolist(), strict=True)) < 3.0
        cam = np.load(out / f"{name}_det{k}_class-{label.split()[-1]}_grad-cam.npy")
        assert cam.shape == (64, 64) and cam.dtype == np.float16
        assert _inside(cam.astype(np.float32), true.tolist())
        assert (out / f"{name}_det{k}_class-{label.split()[-1]}_grad-cam.png").is_file()
    for i in range(2):
        drawn = Image.open(out / f"scene{i}_detections_grad-cam.png")
        assert drawn.size == (64, 64)


def test_target_by_name_and_box_choose_detections(pictures, tmp_path, capsys) -> None:
    paths, boxes, labels = pictures
    names = tmp_path / "names.txt"
    names.write_text("background\nred square\nblue square\n")
    base = ["explain", paths[0], "--model", DETECTOR, "--task", "detection", *PLAIN]
    base += ["--method", "grad-cam", "--layer", "backbone", "--class-names", str(names)]
    assert main([*base, "--target", "blue square", "--out", str(tmp_path / "a")]) == 0
    found = _detections(capsys.readouterr().out)
    assert [f[2] for f in found] == ["blue square (2)"]
    red = boxes[0][labels[0] == 1][0].tolist()
    near = ",".join(str(v + 1) for v in red)
    assert main([*base, "--box", near, "--out", str(tmp_path / "b")]) == 0
    found = _detections(capsys.readouterr().out)
    assert [f[2] for f in found] == ["red square (1)"]
    assert (tmp_path / "b" / f"scene0_det{found[0][1]}_red-square_grad-cam.npy").is_file()


def test_dense_output_gives_the_same_detections(pictures, tmp_path, capsys) -> None:
    paths, _, _ = pictures
    common = [paths[0], "--task", "detection", *PLAIN, "--method", "grad-cam"]
    common += ["--layer", "backbone"]
    assert main(["explain", *common, "--model", DETECTOR, "--out", str(tmp_path / "t")]) == 0
    plain = _detections(capsys.readouterr().out)
    dense = ["explain", *common[:-1], "net.backbone", "--box-format", "xyxy"]
    spec = "tests.support.task_models:dense_detector"
    assert main([*dense, "--model", spec, "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert "(dense detections)" in text
    got = _detections(text)
    # the dense view's labels are class columns: label 1 of torchvision is column 0
    assert sorted((int(f[2].split()[-1]) + 1, round(f[3], 3)) for f in got) == sorted(
        (int(f[2].split()[-1]), round(f[3], 3)) for f in plain
    )
    for a, b in zip(sorted(f[4] for f in got), sorted(f[4] for f in plain), strict=True):
        assert np.allclose(a, b, atol=0.1)


def test_default_method_is_grad_cam_and_methods_add_up(pictures, tmp_path, capsys) -> None:
    paths, boxes, labels = pictures
    args = ["explain", paths[1], "--model", DETECTOR, "--task", "detection", *PLAIN]
    args += ["--layer", "backbone", "--out", str(tmp_path)]
    assert main(args) == 0
    found = _detections(capsys.readouterr().out)
    assert len(found) == 2 and {f[5] for f in found} == {"grad-cam"}
    assert main([*args, "--methods", "sa-cam", "recipro-cam"]) == 0
    more = _detections(capsys.readouterr().out)
    assert sorted((f[5], f[1]) for f in more) == [
        ("recipro-cam", 1),
        ("recipro-cam", 2),
        ("sa-cam", 1),
        ("sa-cam", 2),
    ]
    for _name, k, label, *_rest in found:
        stem = f"scene1_det{k}_{label.replace(' ', '-')}"
        maps = [np.load(tmp_path / f"{stem}_{m}.npy") for m in ("grad-cam", "recipro-cam")]
        assert not np.array_equal(maps[0], maps[1])  # every method has its own file
        true = boxes[1][labels[1] == int(label.split()[-1])][0].tolist()
        assert _inside(maps[1].astype(np.float32), true)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "detection", "--box", "1,2,3"], "is not a box: give four numbers"),
        (["--task", "detection", "--box", "10,10,5,20"], "x2 must exceed x1"),
        (["--task", "detection", "--score-threshold", "2"], "outside [0, 1]"),
        (["--box", "1,2,3,4"], "--box apply to --task detection only"),
        (["--task", "detection", "--save-maps"], "--save-maps is for classifiers"),
        (["--task", "detection", "--activation", "sigmoid"], "--activation is for classifiers"),
        (["--task", "segmentation", "--activation", "none"], "--activation is for classifiers"),
        (["--task", "detect"], "invalid choice: 'detect'"),
    ],
)
def test_bad_task_arguments_exit_2(pictures, tmp_path, capsys, extra, message) -> None:
    paths, _, _ = pictures
    try:
        code = main(
            ["explain", paths[0], "--model", DETECTOR, *PLAIN, *extra, "--out", str(tmp_path)]
        )
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_classifier_is_refused_for_detection(pictures, tmp_path, capsys) -> None:
    paths, _, _ = pictures
    args = ["explain", paths[0], "--model", "tests.support.nets:colour_net", "--task"]
    assert main([*args, "detection", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sacam: error: --task detection needs a detector")
    assert "returned a tensor (1, 5)" in err and "list of dicts with boxes" in err
    assert not list(tmp_path.glob("*.png"))


def test_segmentation_explains_each_predicted_class(pictures, tmp_path, capsys) -> None:
    paths, _, _ = pictures
    spec = "tests.support.task_models:segmenter"
    args = ["explain", paths[0], "--model", spec, "--task", "segmentation", *PLAIN]
    assert main([*args, "--method", "grad-cam", "--layer", "2", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    from tests.support.task_models import segmenter

    x = torch.from_numpy(np.asarray(Image.open(paths[0]))).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        present = segmenter()(x[None])[0].argmax(0).unique().tolist()
    assert present  # the classes the mask holds, each explained once
    for cls in present:
        assert f"class {cls} " in text
        cam = np.load(tmp_path / f"scene0_class-{cls}_grad-cam.npy")
        assert cam.shape == (64, 64)
    assert len(list(tmp_path.glob("*.npy"))) == len(present)


def test_serve_takes_the_task_and_its_options(tmp_path, monkeypatch) -> None:
    require("fastapi")  # under CI a missing web app fails the test
    import sacam.serve

    seen: dict = {}
    monkeypatch.setattr(sacam.serve, "serve", lambda model, **kw: seen.update(kw, model=model))
    names = tmp_path / "names.txt"
    names.write_text("background\nred\nblue\n")
    args = ["serve", "--model", DETECTOR, "--task", "detection", "--box-format", "xyxy"]
    assert main([*args, "--size", "64", "--class-names", str(names)]) == 0
    assert seen["task"] == "detection" and seen["model"] == DETECTOR
    assert seen["dense"].box_format == "xyxy" and not seen["dense"].objectness
    assert seen["size"] == 64 and seen["class_names"] == ["background", "red", "blue"]
    seen.clear()
    assert main(["serve", "--model", DETECTOR]) == 0
    assert seen["task"] == "classification" and seen["dense"] is None


def test_serve_refuses_dense_options_without_detection(capsys) -> None:
    assert main(["serve", "--box-format", "xyxy"]) == 2
    assert "--box-format and --objectness apply to --task detection only" in capsys.readouterr().err
