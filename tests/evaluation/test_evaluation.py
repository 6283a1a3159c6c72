"""The evaluation suite: ROAD, localisation, stability, sanity, complexity, the runner."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import sacam
from sacam.api import build_method
from sacam.evaluation import (
    adversarial,
    complexity,
    faithfulness,
    localization,
    road,
    robustness,
    sanity,
)
from sacam.evaluation.runner import execution, run_benchmark
from sacam.preprocess import Preprocess
from tests.support.nets import colour_net, small_cnn
from tests.support.runs import colour_folder, run_config


def test_imputation_solves_its_system_and_keeps_known_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 9, 11, generator=g)
    missing = torch.rand(9, 11, generator=g) < 0.4
    missing[0, 0] = missing[8, 10] = True  # corners: renormalised border weights
    y = road.impute(x, missing, noise=0.0)
    assert torch.equal(y[:, ~missing], x[:, ~missing])
    w8 = [
        (-1, 0, 1 / 6),
        (1, 0, 1 / 6),
        (0, -1, 1 / 6),
        (0, 1, 1 / 6),
        (-1, -1, 1 / 12),
        (-1, 1, 1 / 12),
        (1, -1, 1 / 12),
        (1, 1, 1 / 12),
    ]
    worst = 0.0
    for r, c in missing.nonzero().tolist():
        num = torch.zeros(3, dtype=torch.float64)
        den = 0.0
        for dr, dc, w in w8:
            if 0 <= r + dr < 9 and 0 <= c + dc < 11:
                num += w * y[:, r + dr, c + dc].double()
                den += w
        worst = max(worst, float((y[:, r, c].double() - num / den).abs().max()))
    assert worst < 1e-5  # each missing pixel is the weighted mean of its neighbours
    noisy = road.impute(x, missing, noise=0.01, seed=1)
    assert 0.003 < float((noisy - y)[:, missing].std()) < 0.03


def test_road_shapes_and_complementary_masks() -> None:
    net = small_cnn().eval()
    pre = Preprocess(size=16)
    x = pre.normalize(torch.rand(2, 3, 16, 16))
    res = road.road(net, x, torch.rand(2, 16, 16), pre, percentages=(0.1, 0.5, 0.9))
    assert res.morf.shape == res.lerf.shape == (2, 3)
    assert ((res.morf >= 0) & (res.morf <= 1)).all()
    assert torch.allclose(res.gap, res.lerf.mean(1) - res.morf.mean(1))


def test_grid_pointing_game_right_cell_and_uniform() -> None:
    n = 2
    perfect = torch.zeros(4, 32, 32)
    for i in range(4):
        r, c = divmod(i, 2)
        perfect[i, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = 1.0
    assert torch.allclose(localization.grid_pointing_game(perfect, n), torch.ones(4))
    uniform = torch.ones(4, 32, 32)
    assert torch.allclose(localization.grid_pointing_game(uniform, n), torch.full((4,), 0.25))
    assert torch.equal(localization.grid_pointing_game(torch.zeros(4, 32, 32), n), torch.zeros(4))
    smoothed = localization.grid_pointing_game(perfect, n, smooth=15)
    assert (smoothed < 1).all() and (smoothed > 0.5).all()


def test_grids_hold_distinct_classes() -> None:
    cands = [(i, i % 3) for i in range(12)]
    grids = localization.make_grids(cands, n=2)
    assert grids == []  # only 3 classes: no 2×2 grid of distinct classes
    cands = [(i, i) for i in range(9)]
    grids = localization.make_grids(cands, n=2, seed=3)
    assert len(grids) == 2 and all(len(set(g)) == 4 for g in grids)
    assert grids == localization.make_grids(cands, n=2, seed=3)


def test_pointing_and_energy_by_hand() -> None:
    m = torch.zeros(2, 40, 40)
    m[0, 10, 10] = 1.0
    m[1, 0:20, :] = 1.0  # half the energy in the top half
    obj = localization.boxes_to_mask([(0.0, 0.0, 40.0, 20.0)], (40, 40))[None].expand(2, 40, 40)
    assert localization.pointing_game(m, obj).tolist() == [1.0, 1.0]
    far = localization.boxes_to_mask([(30.0, 30.0, 40.0, 40.0)], (40, 40))[None]
    assert localization.pointing_game(m[:1], far, tolerance=15).tolist() == [0.0]
    # distance from (10, 10) to the box corner (30, 30) is 20*sqrt(2) ~ 28.3
    assert localization.pointing_game(m[:1], far, tolerance=29).tolist() == [1.0]
    energy = localization.energy_pointing_game(m, obj)
    assert energy.tolist() == pytest.approx([1.0, 1.0])
    quarter = localization.boxes_to_mask([(0.0, 0.0, 20.0, 20.0)], (40, 40))[None].expand(2, 40, 40)
    assert localization.energy_pointing_game(m, quarter).tolist() == pytest.approx([1.0, 0.5])


def test_boxes_follow_the_preprocessing(tmp_path) -> None:
    pre = Preprocess(size=100)  # crop: 200x100 image -> 200x100 scaled to 200x100 -> crop 50..150
    assert localization.transform_box((60, 10, 140, 90), (200, 100), pre) == (10, 10, 90, 90)
    sq = Preprocess(size=100, resize="squash")
    assert localization.transform_box((0, 0, 200, 50), (200, 100), sq) == (0, 0, 100, 50)
    (tmp_path / "a.csv").write_text("file,x0,y0,x1,y1\nimg.png,1,2,3,4\nimg.png,5,6,7,8\n")
    anns = localization.load_annotations(tmp_path / "a.csv")
    assert anns["img.png"].boxes == [(1, 2, 3, 4), (5, 6, 7, 8)]
    (tmp_path / "a.json").write_text(json.dumps({"img.png": [[1, 2, 3, 4]]}))
    assert localization.load_annotations(tmp_path / "a.json")["img.png"].boxes == [(1, 2, 3, 4)]


def test_stability_measures_by_hand() -> None:
    a = torch.zeros(1, 10, 10)
    a[0, 0, :5] = torch.tensor([5.0, 4, 3, 2, 1])
    b = a.clone()
    b[0, 0, 4] = 0
    b[0, 9, 9] = 0.5
    assert robustness.topk_intersection(a, b, k=5).tolist() == [pytest.approx(0.8)]
    assert robustness.spearman(a, a).tolist() == [pytest.approx(1.0)]
    one = torch.zeros(1, 10, 10)
    one[0, 2, 3] = 1
    two = torch.zeros(1, 10, 10)
    two[0, 5, 7] = 1
    assert robustness.center_of_mass_shift(one, two).tolist() == [pytest.approx(5.0)]
    assert robustness.ssim(a / 5, a / 5).tolist() == [pytest.approx(1.0)]


@pytest.mark.parametrize("kind", ["random", "pgd", "topk", "com"])
def test_attacks_keep_the_label_and_stay_within_eps(kind) -> None:
    net = small_cnn().eval()
    pre = Preprocess(size=16)
    x = pre.normalize(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)))
    cam = build_method(net, "grad-cam")
    adv, kept = adversarial.explanation_attack(
        net, x, pre, lambda i, c: cam.explain_graph(i, c).maps, kind, iterations=20, step=0.5 / 255
    )
    with torch.no_grad():
        assert torch.equal(net(adv).argmax(1), net(x).argmax(1))
    delta = (pre.denormalize(adv) - pre.denormalize(x)).abs().max()
    assert float(delta) <= 8 / 255 + 1e-5
    assert kept.max() > 0  # some steps were taken
    px = pre.denormalize(adv)
    assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5


def test_sanity_check_loses_similarity_and_leaves_model() -> None:
    net = small_cnn().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 3, 16, 16)
    classes = torch.tensor([0, 1])
    res = sanity.sanity_check(
        net, x, lambda m, imgs: sacam.explain(m, imgs, "grad-cam", targets=classes), "cascading"
    )
    assert res.layers == ["8", "3", "2", "0"]  # from the logits down
    assert res.spearman_abs.shape == (2, 4)
    assert float(res.spearman_abs[:, -1].mean()) < 0.9
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    ind = sanity.sanity_check(
        net,
        x,
        lambda m, imgs: sacam.explain(m, imgs, "grad-cam", targets=classes),
        "independent",
        max_layers=2,
    )
    assert ind.ssim.shape == (2, 2)


def test_complexity_by_hand() -> None:
    uniform = torch.ones(1, 4, 4)
    one = torch.zeros(1, 4, 4)
    one[0, 1, 1] = 1
    assert complexity.gini(uniform).tolist() == [pytest.approx(0.0, abs=1e-6)]
    assert complexity.gini(one).tolist() == [pytest.approx(15 / 16)]
    assert complexity.entropy(uniform).tolist() == [pytest.approx(math.log(16))]
    assert complexity.entropy(one).tolist() == [pytest.approx(0.0)]
    assert math.isnan(float(complexity.entropy(torch.zeros(1, 4, 4))[0]))


def test_runner_end_to_end(tmp_path) -> None:
    data = colour_folder(tmp_path)
    (data / "bad.png").write_text("not an image")
    with (data / "labels.csv").open("a") as f:
        f.write("bad.png,1,broken\n")
    out = tmp_path / "out"
    cfg = run_config(
        data,
        out,
        metrics=["all"],
        road_percentages=(0.2, 0.8),
        iterations=2,
        epsilons=(8 / 255,),
        adv_iterations=1,
        sanity_layers=2,
        grid_threshold=0.0,
    )
    summary = run_benchmark(cfg, progress=False)
    for name in (
        "results.csv",
        "summary.md",
        "summary.json",
        "report.html",
        "curves.jsonl",
        "deletion_insertion.png",
        "road.png",
        "metrics.png",
        "examples.png",
    ):
        assert (out / name).exists(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert set(rows[0]) == {"image", "method", "metric", "value"}
    names = {r["metric"] for r in rows}
    assert {
        "average_drop",
        "deletion",
        "road_gap",
        "xattack_pgd_spearman@8",
        "adv_fgsm_topk@8",
        "sanity_spearman",
        "sparsity",
        "grid_pointing_game",
        "time_s",
    } <= names
    failures = list(csv.DictReader((out / "failures.csv").open()))
    assert {f["image"] for f in failures} == {"bad.png"}
    m = cfg.methods[0]
    assert summary["table"][m]["deletion"]["higher_is_better"] is False
    assert summary["settings"]["images"] == 6 and "versions" in summary["settings"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "deletion" in html
    assert "↓" in (out / "summary.md").read_text()


def test_runner_resumes_after_an_interruption(tmp_path, monkeypatch) -> None:
    data = colour_folder(tmp_path, n=4)
    out = tmp_path / "out"
    calls = {"n": 0}
    real = execution.score

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user stops the run mid-way
        return real(*args, **kwargs)

    monkeypatch.setattr(execution, "score", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(run_config(data, out, images_per_step=1), progress=False)
    done_before = {(r["image"], r["method"]) for r in csv.DictReader((out / "results.csv").open())}
    assert len(done_before) == 3
    calls["n"] = -100
    run_benchmark(run_config(data, out, images_per_step=1), progress=False)
    assert calls["n"] == -100 + 5  # only the 5 missing pairs were computed
    rows = list(csv.DictReader((out / "results.csv").open()))
    pairs = [(r["image"], r["method"]) for r in rows if r["metric"] == "time_s"]
    assert len(pairs) == len(set(pairs)) == 8
    with pytest.raises(sacam.SacamError, match=r"other settings \(steps: 8 then, 4 now\)"):
        run_benchmark(run_config(data, out, steps=4), progress=False)


def test_a_folder_from_an_older_version_resumes(tmp_path) -> None:
    data = colour_folder(tmp_path, n=2)
    out = tmp_path / "out"
    run_benchmark(run_config(data, out, metrics=["deletion"]), progress=False)
    rows = (out / "results.csv").read_text()
    run_file = out / "run.json"
    old = json.loads(run_file.read_text())
    del old["topk"], old["layer"]  # settings a later version added, at their defaults
    run_file.write_text(json.dumps(old))
    run_benchmark(run_config(data, out, metrics=["deletion"]), progress=False)
    assert (out / "results.csv").read_text() == rows  # resumed: nothing recomputed
    old["layer"] = ["0"]  # ...but a setting that differs from the default still refuses
    run_file.write_text(json.dumps(old))
    with pytest.raises(sacam.SacamError, match=r"layer: \['0'\] then, None now"):
        run_benchmark(run_config(data, out, metrics=["deletion"]), progress=False)


def test_unknown_metric_and_missing_annotations(tmp_path) -> None:
    data = colour_folder(tmp_path, n=1)
    with pytest.raises(sacam.SacamError, match="unknown metric"):
        run_benchmark(run_config(data, tmp_path / "o", metrics=["nope"]), progress=False)
    with pytest.raises(sacam.SacamError, match="--annotations"):
        run_benchmark(run_config(data, tmp_path / "o2", metrics=["pointing"]), progress=False)


def test_random_baseline_ranks_last() -> None:
    """On images whose class evidence is one coloured patch, every method beats random."""
    net = colour_net().eval()
    pre = Preprocess(size=32)
    g = torch.Generator().manual_seed(0)
    pixels = torch.zeros(4, 3, 32, 32)
    for i in range(4):
        r, c = torch.randint(0, 20, (2,), generator=g).tolist()
        pixels[i, i % 3, r : r + 12, c : c + 12] = 1.0  # red, green or blue patch on black
    x = pre.normalize(pixels)
    scores = {}
    for method in ["cam", "grad-cam", "grad-cam++", "score-cam", "sa-cam", "random"]:
        maps = sacam.explain(net, x, method=method)
        d = faithfulness.deletion(net, x, maps, steps=32).auc.mean()
        ins = faithfulness.insertion(net, x, maps, steps=32).auc.mean()
        scores[method] = (float(d), float(ins))
    worst_deletion = max(scores, key=lambda m: scores[m][0])
    worst_insertion = min(scores, key=lambda m: scores[m][1])
    assert worst_deletion == "random" and worst_insertion == "random", scores


def test_an_images_curves_do_not_depend_on_its_place_in_the_batch() -> None:
    # maps clipped to half zeros: the tie-break among the zeros must be the image's own
    net = small_cnn().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 16, 16, generator=g)
    maps = (torch.rand(4, 16, 16, generator=g) - 0.5).clamp_min(0)
    assert ((maps == 0).float().mean() > 0.4).item()
    for fn in (faithfulness.deletion, faithfulness.insertion):
        batch = fn(net, x, maps, targets=1, steps=8).curves
        alone = torch.cat(
            [fn(net, x[i : i + 1], maps[i : i + 1], 1, steps=8).curves for i in range(4)]
        )
        flipped = fn(net, x.flip(0), maps.flip(0), targets=1, steps=8).curves.flip(0)
        torch.testing.assert_close(batch, alone, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch, flipped, rtol=0, atol=1e-6)
