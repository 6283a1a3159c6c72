"""Running at scale: folder layouts, devices, batches, seeds, threaded decoding, progress."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sacam
from sacam.cli import main
from sacam.errors import InputError
from sacam.evaluation import faithfulness, run_benchmark
from sacam.evaluation.runner import data as data_mod
from sacam.evaluation.runner import execution
from sacam.preprocess import Preprocess
from tests.support.nets import colour_net
from tests.support.runs import TINTS, colour_folder, run_config

WNIDS = ["n01440764", "n01443537", "n01484850"]  # ImageNet classes 0, 1, 2


def _image(path, tint, size=(48, 40), seed=0) -> None:
    rng = np.random.default_rng(seed)
    arr = ((0.5 + 0.5 * rng.random((size[1], size[0], 3))) * np.array(tint) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _values(out) -> dict[tuple[str, str, str], float]:
    with (out / "results.csv").open() as f:
        return {
            (r["image"], r["method"], r["metric"]): float(r["value"])
            for r in csv.DictReader(f)
            if r["metric"] != "time_s"
        }


def test_class_folders_named_by_wordnet_id_or_index(tmp_path) -> None:
    root = tmp_path / "wnid"
    for k, wnid in enumerate(WNIDS[:2]):
        for i in range(2):
            _image(root / wnid / f"x{i}.png", TINTS[k], seed=i)
    items = data_mod.discover(root).items
    assert [(it.name, it.label) for it in items] == [
        ("n01440764/x0.png", 0),
        ("n01440764/x1.png", 0),
        ("n01443537/x0.png", 1),
        ("n01443537/x1.png", 1),
    ]
    idx = tmp_path / "idx"
    _image(idx / "3" / "sub" / "a.jpg", TINTS[0])
    _image(idx / "0" / "b.png", TINTS[1])
    (idx / "0" / "notes.txt").write_text("not an image")
    assert [(it.name, it.label) for it in data_mod.discover(idx).items] == [
        ("0/b.png", 0),
        ("3/sub/a.jpg", 3),
    ]
    _image(tmp_path / "bad" / "cats" / "a.png", TINTS[0])
    with pytest.raises(InputError, match="folder 'cats': class folders are named by WordNet"):
        data_mod.discover(tmp_path / "bad")
    _image(tmp_path / "unk" / "n99999999" / "a.png", TINTS[0])
    with pytest.raises(InputError, match="not an ImageNet-1k WordNet id"):
        data_mod.discover(tmp_path / "unk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no labels.csv, no LOC_val_solution.csv"):
        data_mod.discover(tmp_path / "empty")


def _imagenet_val(tmp_path):
    root = tmp_path / "val-layout"
    rows = ["ImageId,PredictionString"]
    for i, wnid in enumerate(WNIDS):
        image_id = f"ILSVRC2012_val_{i + 1:08d}"
        _image(root / "val" / f"{image_id}.JPEG", TINTS[i], seed=i)
        # two boxes of the class (left half, split in two) and one of another class
        rows.append(f"{image_id},{wnid} 0 0 24 20 {wnid} 0 20 24 40 n01494475 30 0 48 40 ")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return root


def test_imagenet_val_layout_boxes_feed_the_pointing_games(tmp_path) -> None:
    root = _imagenet_val(tmp_path)
    ds = data_mod.discover(root)
    assert ds.layout == "imagenet-val"
    assert [(it.name, it.label) for it in ds.items] == [
        ("ILSVRC2012_val_00000001.JPEG", 0),
        ("ILSVRC2012_val_00000002.JPEG", 1),
        ("ILSVRC2012_val_00000003.JPEG", 2),
    ]
    assert ds.annotations["ILSVRC2012_val_00000002.JPEG"].boxes == [(0, 0, 24, 20), (0, 20, 24, 40)]
    out = tmp_path / "out"
    cfg = run_config(root, out, metrics=["energy_pointing", "pointing"])
    summary = run_benchmark(cfg, progress=False)
    assert summary["settings"]["data_layout"] == "imagenet-val"
    values = _values(out)
    # by hand: 48×40 image, crop to 32: scale 0.8 -> 38×32, 3 columns cut at the left;
    # the boxes' union x in [0, 24] -> [0, 16.2]: pixel columns 0..15 of the 32×32 input
    lm = sacam.models.with_preprocess(
        sacam.models.load_model("tests.support.nets:colour_net"), size=32
    )
    for it in ds.items:
        x = lm.preprocess(sacam.images.load_image(it.path))[None]
        maps = sacam.explain(lm.model, x, method="grad-cam")[0]
        expected = float(maps[:, :16].sum() / maps.sum())
        got = values[(it.name, "grad-cam", "energy_pointing_game")]
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert values[(it.name, "grad-cam", "pointing_game")] in (0.0, 1.0)


def test_bad_loc_rows_name_their_line(tmp_path) -> None:
    root = _imagenet_val(tmp_path)
    with (root / "LOC_val_solution.csv").open("a") as f:
        f.write("ILSVRC2012_val_00000009,n01440764 1 2 three 4\n")
    with pytest.raises(InputError, match=r"line 5: box coordinates \['1', '2', 'three', '4'\]"):
        data_mod.discover(root)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu0", "is not a torch device: use cpu, cuda, cuda:N or mps"),
        ("cuda", "CUDA is not available on this machine"),
        ("meta", "meta"),
    ],
)
def test_bad_devices_exit_2(tmp_path, capsys, monkeypatch, device, message) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = colour_folder(tmp_path, n=1)
    with pytest.raises(SystemExit) as exc:  # argparse's exit, before any work
        main(["benchmark", str(data), "--device", device, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1, err
    assert err.startswith("sacam: error: ") and not (tmp_path / "o").exists()


def test_batch_size_does_not_change_the_numbers(tmp_path) -> None:
    data = colour_folder(tmp_path, n=5)
    run_benchmark(run_config(data, tmp_path / "a", images_per_step=1), progress=False)
    run_benchmark(run_config(data, tmp_path / "b", images_per_step=4, workers=3), progress=False)
    a, b = _values(tmp_path / "a"), _values(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 5 * 2 * 7
    for key in a:  # float noise of batched convolutions only
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key


def test_curves_batched_across_images_equal_one_image_at_a_time() -> None:
    net = colour_net().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 12, 12, generator=g)
    maps = torch.rand(3, 12, 12, generator=g)
    together = faithfulness.deletion(net, x, maps, steps=6, inputs_per_pass=5)  # 7 points per image
    for i in range(3):
        alone = faithfulness.deletion(
            net, x[i : i + 1], maps[i : i + 1], steps=6, inputs_per_pass=2
        )
        torch.testing.assert_close(together.curves[i], alone.curves[0], rtol=1e-5, atol=1e-6)


def test_seed_is_the_runs(tmp_path) -> None:
    data = colour_folder(tmp_path, n=2)
    runs = (("a", 0), ("b", 0), ("c", 1))
    for name, seed in runs:  # a fixed curve batch: "auto" may pick another per run
        cfg = run_config(
            data, tmp_path / name, seed=seed, metrics=["deletion"], curve_inputs_per_pass=8
        )
        run_benchmark(cfg, progress=False)
    a, b, c = (_values(tmp_path / name) for name, _ in runs)
    assert a == b  # the same seed: the same numbers
    random_pairs = [k for k in a if k[1] == "random"]
    assert any(a[k] != c[k] for k in random_pairs)  # the random map follows --seed


def test_threaded_decoding_keeps_order_and_reports_failures(tmp_path, monkeypatch) -> None:
    data = colour_folder(tmp_path, n=5)
    (data / "broken.png").write_text("not an image")
    items = data_mod.read_labels_csv(data)
    items.insert(2, data_mod.Item("broken.png", data / "broken.png", 0, "test"))
    threads: set[str] = set()
    real = data_mod._decode

    def spy(item, pre):  # noqa: ANN001, ANN202
        threads.add(threading.current_thread().name)
        return real(item, pre)

    monkeypatch.setattr(data_mod, "_decode", spy)
    pre = Preprocess(size=16)
    got = list(data_mod.batches(items, pre, batch_size=2, workers=3))
    assert [[it.name for it in b.items] for b in got] == [
        ["img0.png", "img1.png"],
        ["img2.png"],
        ["img3.png", "img4.png"],
    ]
    assert [f[0].name for b in got for f in b.failed] == ["broken.png"]
    assert "cannot read image" in got[1].failed[0][1]
    for b in got:
        for it, px in zip(b.items, b.pixels, strict=True):
            torch.testing.assert_close(px, pre.pixels(Image.open(it.path)))
    assert threads and all(t.startswith("sacam-decode") for t in threads)


def test_one_progress_bar_per_method_with_rate_and_eta(tmp_path, capsys) -> None:
    data = colour_folder(tmp_path, n=3)
    run_benchmark(run_config(data, tmp_path / "o", metrics=["complexity"]), progress=True)
    err = capsys.readouterr().err
    for method in ("grad-cam", "random"):
        assert f"{method}: 100%" in err and "3/3 [" in err
    assert "img/s]" in err and "<00:00" in err  # rate and remaining time


def test_auto_curve_batch_spends_no_forward_on_measuring() -> None:
    net = colour_net().eval()
    seen: list[int] = []
    handle = net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(5, 3, 12, 12, generator=g)
        maps = torch.rand(5, 12, 12, generator=g)
        auto = faithfulness.deletion(net, x, maps, targets=0, steps=40, inputs_per_pass="auto")
        seen.clear()
        again = faithfulness.deletion(net, x, maps, targets=0, steps=40, inputs_per_pass="auto")
        # 40 steps of 144 px: 4 px per step, 36 steps, 37 points per image; every pass is
        # a curve chunk, nothing is spent on timing alone
        assert sum(seen) == 5 * 37 + 1  # + the one-image forward that checks the targets
        fixed = faithfulness.deletion(net, x, maps, targets=0, steps=40, inputs_per_pass=7)
    finally:
        handle.remove()
    torch.testing.assert_close(auto.curves, fixed.curves, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again.curves, fixed.curves, rtol=1e-5, atol=1e-6)
    plan = faithfulness.tuned_plan(net, x)
    assert plan.inputs_per_pass in (8, 16, 32, 64)


def _counting(fn, flag: threading.Event):  # noqa: ANN001, ANN202
    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        flag.set()
        return fn(*args, **kwargs)

    return wrapped


def _rows(text: str) -> dict[tuple[str, str], float]:
    fields = ("label", "top1", "prob", "label_prob")
    return {(r["file"], k): float(r[k]) for r in csv.DictReader(text.splitlines()) for k in fields}


def _predicted(out: Path) -> list[str]:
    with (out / "predictions.csv").open() as f:
        return [r["file"] for r in csv.DictReader(f)]


def test_a_custom_engine_finds_every_image_predicted(tmp_path) -> None:
    data = colour_folder(tmp_path, n=5)

    def engine(run) -> None:  # noqa: ANN001
        todo, missing = execution.missing_by_method(run.dataset.items, run.config.methods, run.done)
        for loaded in data_mod.batches(todo, run.lm.preprocess, 2, 1):
            for method, part in execution.method_parts(loaded, missing):
                execution.record(run, method, execution.score_batch(run, method, part))

    cfg = run_config(data, tmp_path / "custom", metrics=["confidence"], images_per_step=2)
    summary = run_benchmark(cfg, progress=False, engine=engine)
    assert summary["failures"] == 0
    assert _predicted(tmp_path / "custom") == [f"img{i}.png" for i in range(5)]
    run_benchmark(run_config(data, tmp_path / "local", metrics=["confidence"], images_per_step=2))
    assert _values(tmp_path / "custom") == pytest.approx(_values(tmp_path / "local"))


def test_lost_or_cut_predictions_are_made_again_once(tmp_path, monkeypatch) -> None:
    data = colour_folder(tmp_path, n=5)
    out = tmp_path / "out"
    cfg = run_config(data, out, metrics=["confidence"], images_per_step=2)
    first = run_benchmark(cfg, progress=False)
    path = out / "predictions.csv"
    whole = path.read_text()
    decoded: list[str] = []
    real = data_mod._decode

    def spy(item, pre):  # noqa: ANN001, ANN202
        decoded.append(item.name)
        return real(item, pre)

    monkeypatch.setattr(data_mod, "_decode", spy)
    monkeypatch.setattr(execution, "write_report", lambda *a: None)
    # every pair is done; a kill cut the last prediction, and one row was lost
    lines = whole.splitlines(keepends=True)
    # the cut line has a prob, so only dropping it makes the image be predicted again
    path.write_text("".join(lines[:2] + lines[3:-1]) + lines[-1].rsplit(",", 1)[0])
    again = run_benchmark(cfg, progress=False)
    assert sorted(decoded) == sorted([lines[2].split(",")[0], lines[-1].split(",")[0]])
    assert _rows(path.read_text()) == pytest.approx(_rows(whole), abs=2e-6)
    assert again["table"] == first["table"]
    path.unlink()
    decoded.clear()
    run_benchmark(cfg, progress=False)
    assert sorted(decoded) == sorted(_predicted(out)) == [f"img{i}.png" for i in range(5)]
    assert path.read_text() == whole  # same batches, same rows


def test_each_image_is_decoded_once_for_all_methods_and_resume_fills_only_gaps(
    tmp_path, monkeypatch
) -> None:
    data = colour_folder(tmp_path, n=5)
    (data / "bad.png").write_text("not an image")
    with (data / "labels.csv").open("a") as f:
        f.write("bad.png,1,broken\n")
    names = [f"img{i}.png" for i in range(5)] + ["bad.png"]
    decoded: list[str] = []
    counting = threading.Event()  # on from the start of a run to its report (figures)
    real, report = data_mod._decode, execution.write_report

    def spy(item, pre):  # noqa: ANN001, ANN202
        if counting.is_set():
            decoded.append(item.name)
        return real(item, pre)

    def spied_report(*args) -> None:  # noqa: ANN002
        counting.clear()
        report(*args)

    monkeypatch.setattr(data_mod, "_decode", spy)
    monkeypatch.setattr(execution, "write_report", spied_report)
    monkeypatch.setattr(execution, "_prepare", _counting(execution._prepare, counting))
    three = ["grad-cam", "random", "grad-cam++"]
    fresh = run_config(
        data, tmp_path / "fresh", metrics=["confidence", "complexity"], images_per_step=4
    )
    fresh.methods = three
    run_benchmark(fresh, progress=False)
    # once for the prediction and the three methods: not once per method, no predictions pass
    assert sorted(decoded) == sorted(names)
    assert _predicted(tmp_path / "fresh") == [f"img{i}.png" for i in range(5)]

    out = tmp_path / "resumed"
    first = run_config(data, out, metrics=["confidence", "complexity"], images_per_step=4)
    first.methods = ["grad-cam"]
    run_benchmark(first, progress=False)
    decoded.clear()
    more = run_config(data, out, metrics=["confidence", "complexity"], images_per_step=4)
    more.methods = three
    summary = run_benchmark(more, progress=False)
    assert sorted(decoded) == sorted(names)  # the two new methods share one decode
    with (out / "results.csv").open() as f:
        keys = [(r["image"], r["method"], r["metric"]) for r in csv.DictReader(f)]
    assert len(keys) == len(set(keys))  # nothing written twice
    assert _values(out) == pytest.approx(_values(tmp_path / "fresh"))
    with (out / "failures.csv").open() as f:
        failed = sorted((r["image"], r["method"]) for r in csv.DictReader(f))
    # a failed pair is retried on resume and recorded once, not once per run
    assert failed == sorted(("bad.png", m) for m in three)
    assert summary["failures"] == 3


def test_a_failed_grid_is_retried_and_recorded_once(tmp_path, monkeypatch) -> None:
    from sacam.evaluation.runner import grid as grid_mod

    data = colour_folder(tmp_path, n=4)
    out = tmp_path / "out"
    real = grid_mod.MetricBatch

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("boom")

    def run() -> dict:
        cfg = run_config(data, out, metrics=["grid_pointing"], grid_threshold=0.0)
        return run_benchmark(cfg, progress=False)

    monkeypatch.setattr(grid_mod, "MetricBatch", broken)
    run()
    summary = run()  # resumed: the grid pairs are retried, and fail again
    with (out / "failures.csv").open() as f:
        rows = [(r["image"], r["method"]) for r in csv.DictReader(f)]
    assert rows and len(rows) == len(set(rows)) and all(i.startswith("grid-") for i, _ in rows)
    assert summary["failures"] == len(rows)
    monkeypatch.setattr(grid_mod, "MetricBatch", real)
    summary = run()  # fixed: they succeed, and no failure is left
    with (out / "failures.csv").open() as f:
        assert list(csv.DictReader(f)) == []
    assert summary["failures"] == 0
