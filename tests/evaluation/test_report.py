"""Figures and report: a style per method, ranked bars, legends beside the axes, best marked."""

from __future__ import annotations

import contextlib
import math
import re

import numpy as np
import pytest

import sacam
from sacam.evaluation import run_benchmark
from sacam.evaluation.runner import figures, report
from tests.support.runs import colour_folder, run_config


def test_every_method_has_its_own_colour_and_marker_and_sa_cam_stands_out() -> None:
    methods = sacam.list_methods()
    assert len(methods) >= 13
    styles = {m: figures.method_style(m) for m in methods}
    colours = [
        tuple(map(float, s["color"])) if not isinstance(s["color"], str) else s["color"]
        for s in styles.values()
    ]
    assert len(set(colours)) == len(methods)  # grad-cam and random are no longer both orange
    greys = [
        c
        for m, c in zip(styles, colours, strict=True)
        if m != "random" and not isinstance(c, str) and c[0] == c[1] == c[2]
    ]
    assert not greys  # only the random baseline is grey
    assert len({(str(s["color"]), s["marker"]) for s in styles.values()}) == len(methods)
    sa = styles["sa-cam"]
    others = [s for m, s in styles.items() if m != "sa-cam"]
    assert all(sa["linewidth"] > s["linewidth"] and sa["zorder"] > s["zorder"] for s in others)
    assert figures.method_style("grad-cam") == figures.method_style("grad-cam")  # stable


def _summary(values: dict[str, float], metric: str) -> dict:
    return {m: {metric: {"mean": v, "ci95": 0.01}} for m, v in values.items()}


def test_bars_and_best_follow_each_metrics_direction() -> None:
    table = _summary({"a": 0.3, "b": 0.1, "c": math.nan, "d": 0.2}, "deletion")  # lower better
    assert figures.ranked(table, "deletion") == ["b", "d", "a", "c"]
    table = _summary({"a": 0.3, "b": 0.1, "d": 0.2}, "insertion")  # higher is better
    assert figures.ranked(table, "insertion") == ["a", "d", "b"]
    html = report.render_table({"table": table})
    best = re.findall(r"<tr><th>(\w)</th><td class='best'>★", html)
    assert best == ["a"] and html.count("★") == 1
    tie = _summary({"a": 25.0, "b": 0.0, "c": 25.0}, "increase_in_confidence")
    assert re.findall(
        r"<tr><th>(\w)</th><td class='best'>★", report.render_table({"table": tie})
    ) == ["a", "c"]


def test_curve_legend_sits_beside_the_axes(tmp_path, monkeypatch) -> None:
    kept = {}
    real = figures.saved_figure

    @contextlib.contextmanager
    def keep(path, **kw):  # noqa: ANN001, ANN003, ANN202
        with real(path, **kw) as (fig, axes):
            kept["axes"] = axes
            yield fig, axes

    monkeypatch.setattr(figures, "saved_figure", keep)
    methods = sacam.list_methods()[-13:]  # random and sa-cam among them
    curves = {
        (m, k): [[1.0 - i / 10, 0.5, 0.1]]
        for i, m in enumerate(methods)
        for k in ("deletion", "insertion")
    }
    path = figures.plot_mean_curves(
        tmp_path / "c.png",
        curves,
        ["deletion", "insertion"],
        lambda n: list(range(n)),
        "x",
        methods,
    )
    assert path is not None and path.exists()
    data_axes, legend_ax = list(kept["axes"][0][:-1]), kept["axes"][0][-1]
    assert all(ax.get_legend() is None for ax in data_axes)
    legend = legend_ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == methods
    assert [ax.get_title() for ax in data_axes] == [
        "Deletion (lower is better)",
        "Insertion (higher is better)",
    ]


def test_report_is_one_page_with_human_titles_and_no_overflow(tmp_path) -> None:
    data = colour_folder(tmp_path, n=3)
    out = tmp_path / "out"
    run_benchmark(run_config(data, out), progress=False)
    html = (out / "report.html").read_text()
    assert "<h2>Deletion and insertion curves</h2>" in html
    assert "<h2>Every metric, one method order (best in bold)</h2>" in html
    assert "deletion_insertion" not in html
    assert "img{max-width:100%;height:auto}" in html and "overflow-x:auto" in html
    sources = re.findall(r"src='([^']*)'", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in html.split("<h2>Settings</h2>")[0]  # nothing fetched from outside
    assert html.count("class='best'") >= 7  # a best per value: AD, IC, AG, del, ins, 2 complexity
    for name in ("metrics.png", "deletion_insertion.png", "examples.png"):
        assert (out / name).stat().st_size > 1000


def test_intervals_stay_within_a_bounded_metrics_range() -> None:
    from sacam.evaluation.runner.summary import bootstrap_interval, format_interval

    few = [1.0, 1.0, 1.0, 0.0]  # a proportion from 4 images: Student's t reaches past 1
    t = sacam.evaluation.stats.mean_ci(few)
    assert t["mean"] + t["ci95"] > 1.0
    lo, hi = bootstrap_interval(few)
    assert 0.0 <= lo < 0.75 < hi <= 1.0
    assert format_interval({"mean": 0.75, "ci_low": lo, "ci_high": hi}).startswith("0.750 [")
    assert all(math.isnan(v) for v in bootstrap_interval([0.5]))


@pytest.mark.parametrize("values", [[0.1] * 3, [0.3] * 10, [0.1, 0.1, 0.1, 0.2], [0.0, 1.0]])
def test_an_interval_never_leaves_the_values_range_by_rounding(values) -> None:
    from sacam.evaluation.runner.summary import bootstrap_interval

    # averaging copies of 0.1 gives 0.10000000000000002, past the largest value
    assert float(np.mean([0.1] * 3)) > 0.1
    lo, hi = bootstrap_interval(values)
    assert min(values) <= lo <= hi <= max(values)


def test_the_star_needs_a_paired_interval_against_the_runner_up() -> None:
    from sacam.evaluation.runner.summary import decide_best

    images = [f"i{k}" for k in range(6)]
    clear = {"a": [0.9, 0.8, 0.85, 0.9, 0.95, 0.8], "b": [0.5, 0.4, 0.45, 0.5, 0.55, 0.4]}
    noisy = {"a": [0.9, 0.1, 0.8, 0.2, 0.7, 0.3], "b": [0.2, 0.8, 0.3, 0.7, 0.4, 0.5]}
    for values, decided in ((clear, True), (noisy, False)):
        by = {(m, "insertion"): list(zip(images, v, strict=True)) for m, v in values.items()}
        table = {
            m: {"insertion": {"mean": sum(v) / 6, "higher_is_better": True}}
            for m, v in values.items()
        }
        best = decide_best(by, table)
        assert best["insertion"]["methods"] == ["a"] and best["insertion"]["runner_up"] == "b"
        assert best["insertion"]["decided"] is decided
        html = report.render_table({"table": table, "best": best})
        assert ("★" in html) is decided and "<th>a</th><td class='best'>" in html


def test_settings_list_only_what_applied_and_example_maps_name_their_class(tmp_path) -> None:
    data = colour_folder(tmp_path, n=3)
    out = tmp_path / "out"
    config = run_config(data, out)
    config.metrics = ["complexity"]
    summary = run_benchmark(config, progress=False)
    settings = summary["settings"]
    for unused in ("steps", "road_percentages", "grid_threshold", "epsilons", "iterations"):
        assert unused not in settings
    assert settings["metrics"] == ["complexity"] and "seed" in settings
    html = (out / "report.html").read_text()
    assert '"grid_threshold"' not in html.split("<h2>Settings</h2>")[1]


def test_metric_panels_fill_their_grid() -> None:
    assert [figures._columns(n) for n in (1, 2, 3, 4, 6, 8, 9)] == [1, 2, 3, 4, 3, 4, 3]


def test_metric_panels_share_one_method_order_and_mark_the_best(tmp_path, monkeypatch) -> None:
    kept = {}
    real = figures.saved_figure

    @contextlib.contextmanager
    def keep(path, **kw):  # noqa: ANN001, ANN003, ANN202
        with real(path, **kw) as (fig, axes):
            kept["axes"] = axes
            yield fig, axes

    monkeypatch.setattr(figures, "saved_figure", keep)
    table = {
        "sa-cam": {"deletion": {"mean": 0.3, "ci95": 0.1}, "insertion": {"mean": 0.9, "ci95": 0.1}},
        "grad-cam": {
            "deletion": {"mean": 0.1, "ci95": 0.1},
            "insertion": {"mean": 0.5, "ci95": 0.1},
        },
    }
    best = {"deletion": {"decided": True}, "insertion": {"decided": False}}
    assert figures.plot_metric_bars(tmp_path / "m.png", {"table": table, "best": best})
    axes = [ax for ax in kept["axes"].flat if ax.figure is not None]
    labels = [[t.get_text() for t in ax.get_xticklabels()] for ax in axes]
    assert labels == [["sa-cam", "★ grad-cam"], ["sa-cam", "grad-cam"]]
    bold = [[t.get_fontweight() == "bold" for t in ax.get_xticklabels()] for ax in axes]
    assert bold == [[False, True], [True, False]]
    assert axes[1].get_ylim()[0] > 0.1  # the axis spans the values, not 0 to them


def test_the_last_phase_is_announced_where_progress_shows(tmp_path, capsys) -> None:
    data = colour_folder(tmp_path, n=2)
    for progress, shown in ((True, True), (False, False)):
        out = tmp_path / f"out-{progress}"
        config = run_config(data, out)
        config.metrics = ["complexity"]
        run_benchmark(config, progress=progress)
        err = capsys.readouterr().err
        assert (f"writing the figures and report.html to {out}/" in err) is shown
