"""Detection and segmentation runs resume, record failures and write report.html.

The detector is the tiny one trained on coloured squares (:mod:`tests.support.detectors`)
and the segmenter the seeded one of :mod:`tests.support.task_models`; the datasets are
scenes written here as PNG files. A run interrupted, cut mid-line and resumed must end
with the rows of one uninterrupted run, each once; the methods are deterministic (the
``random`` method is seeded), so the rows agree exactly but for the seconds per map.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sacam.cli import main
from sacam.errors import SacamError
from sacam.evaluation.config import BenchmarkConfig
from sacam.evaluation.runner import run_benchmark, tasks
from sacam.evaluation.stats import format_mean_ci
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

METHODS = ["grad-cam", "random"]
METRICS = ["pointing", "energy_pointing", "deletion"]
IMAGE_ROWS = tasks._image_rows  # the real one, under the spies below


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six scenes of one or two squares and a plain image whose one object is never found."""
    root = tmp_path_factory.mktemp("task-scenes")
    write_detection_set(root, 6)
    return root


def _names(data: Path) -> list[str]:
    return sorted(p.name for p in data.glob("*.png"))


def _config(data: Path, out: Path, **changes: Any) -> BenchmarkConfig:
    return detection_config(data, out, **({"metrics": METRICS, "steps": 8} | changes))


def _broken_copy(scenes: Path, tmp_path: Path, name: str, data: bytes) -> Path:
    """A copy of the scenes in which ``name`` holds ``data`` (not a readable image)."""
    copy = tmp_path / "data"
    shutil.copytree(scenes, copy)
    (copy / name).write_bytes(data)
    return copy


def _key(row: dict[str, str]) -> tuple[str, str, int]:
    return row["image"], row["method"], int(row["object"])


def _comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows in one order, without the seconds per map (which differ between runs)."""
    return sorted(({k: v for k, v in r.items() if k != "time_s"} for r in rows), key=_key)


def _values(summary: dict[str, Any]) -> str:
    """The summary's numbers but the seconds per map (as JSON: NaN equals NaN)."""
    table = {m: {k: v for k, v in e.items() if k != "time_s"} for m, e in summary["table"].items()}
    counts = {k: summary[k] for k in ("images", "objects", "missed")}
    return json.dumps({"table": table, **counts}, sort_keys=True)


@pytest.fixture(scope="module")
def whole(scenes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list]:
    """One uninterrupted run: its summary and rows."""
    out = tmp_path_factory.mktemp("task-whole")
    summary = run_benchmark(_config(scenes_dir, out), progress=False)
    return summary, result_rows(out)


def _spy(monkeypatch: pytest.MonkeyPatch, stop_at: str | None = None) -> list[tuple[str, tuple]]:
    """Record which images are computed for which methods; Ctrl-C on image ``stop_at``."""
    computed: list[tuple[str, tuple]] = []

    def image_rows(lm, image, config, methods):
        if image.name == stop_at:
            raise KeyboardInterrupt
        computed.append((image.name, tuple(methods)))
        return IMAGE_ROWS(lm, image, config, methods)

    monkeypatch.setattr(tasks, "_image_rows", image_rows)
    return computed


def test_whole_run_has_one_row_per_object_and_method(scenes_dir, whole) -> None:
    summary, rows = whole
    with (scenes_dir / "annotations.csv").open(newline="") as f:
        n_objects = sum(1 for _ in csv.DictReader(f))
    assert len(rows) == len(METHODS) * n_objects
    assert len({_key(r) for r in rows}) == len(rows)
    assert summary["objects"] == n_objects and summary["failures"] == 0
    assert summary["files"] == [
        "results.csv",
        "failures.csv",
        "summary.md",
        "summary.json",
        "run.json",
        "examples.png",
        "report.html",
    ]


def test_an_interrupted_and_cut_run_resumes_to_the_rows_of_a_whole_run(
    scenes_dir, whole, tmp_path, monkeypatch
) -> None:
    names = _names(scenes_dir)
    out = tmp_path / "run"
    _spy(monkeypatch, stop_at=names[3])
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(_config(scenes_dir, out), progress=False)
    kept = result_rows(out)
    assert sorted({r["image"] for r in kept}) == names[:3]  # Ctrl-C keeps what was written
    # a kill in the middle of the last line: the third image's last method loses a row
    text = (out / "results.csv").read_text()
    last = text.rstrip("\n").rfind("\n")
    (out / "results.csv").write_text(text[: last + 12])
    assert kept[-1]["image"] == names[2] and kept[-1]["method"] == "random"
    computed = _spy(monkeypatch)
    summary = run_benchmark(_config(scenes_dir, out), progress=False)
    # the first two images are skipped, the cut one computed again for its cut method only
    assert computed == [(names[2], ("random",))] + [(n, tuple(METHODS)) for n in names[3:]]
    rows = result_rows(out)
    assert len({_key(r) for r in rows}) == len(rows)
    assert _comparable(rows) == _comparable(whole[1])
    assert _values(summary) == _values(whole[0])
    # a finished run is not computed again
    computed.clear()
    assert _values(run_benchmark(_config(scenes_dir, out), progress=False)) == _values(whole[0])
    assert computed == [] and len(result_rows(out)) == len(rows)


def test_a_method_added_on_resume_is_computed_for_every_image(
    scenes_dir, whole, tmp_path, monkeypatch
) -> None:
    names = _names(scenes_dir)
    out = tmp_path / "run"
    run_benchmark(_config(scenes_dir, out, methods=["grad-cam"], limit=2), progress=False)
    computed = _spy(monkeypatch)
    summary = run_benchmark(_config(scenes_dir, out), progress=False)
    assert computed == [(n, ("random",)) for n in names[:2]] + [
        (n, tuple(METHODS)) for n in names[2:]
    ]
    assert _comparable(result_rows(out)) == _comparable(whole[1])
    assert _values(summary) == _values(whole[0])
    # a smaller --limit summarises its own images only, and counts the other rows
    small = run_benchmark(_config(scenes_dir, out, limit=2), progress=False)
    mine = [r for r in whole[1] if r["image"] in names[:2]]
    assert small["objects"] == len(mine) // len(METHODS)
    assert small["other_rows"] == len(whole[1]) - len(mine)


@pytest.mark.parametrize(
    ("change", "shown"),
    [({"min_iou": 0.3}, "min_iou: 0.5 then, 0.3 now"), ({"steps": 4}, "steps: 8 then, 4 now")],
)
def test_other_settings_in_the_same_folder_are_refused(scenes_dir, tmp_path, change, shown):
    out = tmp_path / "run"
    run_benchmark(_config(scenes_dir, out, limit=1), progress=False)
    before = (out / "results.csv").read_text()
    with pytest.raises(SacamError, match=re.escape(shown) + ".*use another --out"):
        run_benchmark(_config(scenes_dir, out, limit=1, **change), progress=False)
    assert (out / "results.csv").read_text() == before


def test_an_unreadable_image_is_a_failure_and_the_others_are_scored(
    scenes_dir, whole, tmp_path
) -> None:
    data = _broken_copy(scenes_dir, tmp_path, "scene03.png", b"not an image")
    out = tmp_path / "run"
    summary = run_benchmark(_config(data, out), progress=False)
    with (out / "failures.csv").open(newline="") as f:
        failures = list(csv.DictReader(f))
    assert [r["image"] for r in failures] == ["scene03.png"]
    assert failures[0]["error"].startswith("InputError")
    others = [r for r in whole[1] if r["image"] != "scene03.png"]
    assert _comparable(result_rows(out)) == _comparable(others)
    assert summary["failures"] == 1
    assert json.loads((out / "summary.json").read_text())["failures"] == 1
    # repaired, it is scored on the rerun and its failure row goes
    shutil.copy(scenes_dir / "scene03.png", data / "scene03.png")
    summary = run_benchmark(_config(data, out), progress=False)
    assert (out / "failures.csv").read_text() == "image,error\n"
    assert _comparable(result_rows(out)) == _comparable(whole[1])
    assert summary["failures"] == 0 and _values(summary) == _values(whole[0])


def test_the_command_prints_failures_and_the_files_it_wrote_and_the_report(
    scenes_dir, tmp_path, capsys
) -> None:
    data = _broken_copy(scenes_dir, tmp_path, "scene01.png", b"\x89PNG broken")
    out = tmp_path / "run"
    args = ["benchmark", str(data), "--model", DETECTOR, "--task", "detection", "--size", "64"]
    args += ["--mean", "0", "0", "0", "--std", "1", "1", "1", "--layer", "backbone"]
    args += ["--methods", *METHODS, "--metrics", "pointing", "energy_pointing"]
    args += ["--tolerance", "0", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Failed images (not scored, listed in failures.csv): 1." in printed
    wrote = re.search(r"^wrote (.*) to (.*)/ \(", printed, re.M)
    assert wrote is not None and wrote.group(2) == str(out)
    listed = wrote.group(1).split(", ")
    assert set(listed) == {p.name for p in out.iterdir()} - {".sacam.lock"}
    assert {"report.html", "examples.png", "failures.csv", "run.json"} <= set(listed)
    summary = json.loads((out / "summary.json").read_text())
    page = (out / "report.html").read_text()
    for method in METHODS:
        entry = summary["table"][method]
        for value in ("pointing_game", "energy_pointing_game"):
            assert f"<td>{format_mean_ci(entry[value])}</td>" in page
        assert f"<td>{entry['explained']}</td><td>{entry['missed']}</td>" in page
    assert page.count("data:image/png;base64,") == 1
    assert "scene01.png" in page and "could not be scored" in page
    # four examples (rows), each the image and one map per method (columns)
    assert Image.open(out / "examples.png").size == (675, 900)  # 2.5-inch cells at 90 dpi


def test_a_mask_that_cannot_be_read_as_classes_is_a_failure(tmp_path) -> None:
    x, y = square_scenes(3, seed=5)
    lines = ["file,mask"]
    for i in range(len(x)):
        save_png(x[i], tmp_path / f"s{i}.png")
        mask = y[i].numpy().astype(np.uint8)
        if i == 1:  # an RGB picture, not one class index per pixel
            Image.fromarray(np.repeat(mask[..., None], 3, axis=2)).save(tmp_path / f"m{i}.png")
        else:
            Image.fromarray(mask, mode="L").save(tmp_path / f"m{i}.png")
        lines.append(f"s{i}.png,m{i}.png")
    (tmp_path / "annotations.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    config = _config(
        tmp_path, out, model=SEGMENTER, image_size=32, task="segmentation", layer=["features"]
    )
    summary = run_benchmark(config, progress=False)
    with (out / "failures.csv").open(newline="") as f:
        failures = list(csv.DictReader(f))
    assert [r["image"] for r in failures] == ["s1.png"]
    assert "one class index per pixel" in failures[0]["error"]
    rows = result_rows(out)
    assert sorted({r["image"] for r in rows}) == ["s0.png", "s2.png"]
    assert len(rows) == 2 * 2 * len(METHODS)  # two classes in each scene
    assert summary["failures"] == 1 and summary["images"] == 2
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_a_cut_segmentation_run_resumes_to_the_rows_of_a_whole_run(tmp_path) -> None:
    """The image written last is checked against the classes of its mask."""
    lines = write_segmentation_scenes(tmp_path, 3, seed=7)
    (tmp_path / "annotations.csv").write_text("\n".join(lines) + "\n")
    settings = {"model": SEGMENTER, "image_size": 32, "task": "segmentation"}
    settings |= {"layer": ["features"], "metrics": ["pointing", "energy_pointing"]}
    whole = run_benchmark(_config(tmp_path, tmp_path / "whole", **settings), progress=False)
    out = tmp_path / "run"
    run_benchmark(_config(tmp_path, out, limit=2, **settings), progress=False)
    text = (out / "results.csv").read_text()
    # a write cut between two lines: the last object of the second image's last method lost
    (out / "results.csv").write_text(text[: text.rstrip("\n").rfind("\n") + 1])
    summary = run_benchmark(_config(tmp_path, out, **settings), progress=False)
    rows = result_rows(out)
    assert len({_key(r) for r in rows}) == len(rows) == 3 * 2 * len(METHODS)
    assert _comparable(rows) == _comparable(result_rows(tmp_path / "whole"))
    assert _values(summary) == _values(whole)
