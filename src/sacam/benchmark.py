"""The benchmark runner behind ``sacam benchmark``: every metric, for any methods and images.

``run_benchmark(config)`` explains each image of a labelled folder with each method,
scores the maps with the chosen metrics and writes, to ``config.out``:

- ``results.csv``: tidy rows ``image,method,metric,value`` (appended as each
  (image, method) pair finishes, so an interrupted run resumes where it stopped);
- ``curves.jsonl``: deletion / insertion / ROAD curves per pair (for the figures);
- ``predictions.csv``: each image's label, top-1 class and probability;
- ``failures.csv``: pairs that raised (recorded and skipped, not fatal);
- ``summary.md`` / ``summary.json``: mean and 95% interval per method and metric, each
  metric's direction, time per image and the run's settings;
- figures (``deletion_insertion.png``, ``road.png``, ``metrics.png``, ``examples.png``) and
  ``report.html``, one self-contained page with all of it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import platform
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from . import localization, metrics, road, robustness, sanity
from .api import build_method
from .errors import InputError, SacamError
from .models import LoadedModel, load_image, load_model, with_preprocess
from .registry import method_info
from .viz import save_grid, saved_figure

# value name -> (higher is better, description)
VALUES: dict[str, tuple[bool, str]] = {
    "average_drop": (False, "Average Drop %"),
    "increase_in_confidence": (True, "Increase in Confidence %"),
    "average_gain": (True, "Average Gain %"),
    "deletion": (False, "Deletion AUC"),
    "insertion": (True, "Insertion AUC"),
    "road_morf": (False, "ROAD MoRF (mean prob.)"),
    "road_lerf": (True, "ROAD LeRF (mean prob.)"),
    "road_gap": (True, "ROAD LeRF − MoRF"),
    "pointing_game": (True, "Pointing game accuracy (per class, then mean)"),
    "energy_pointing_game": (True, "Energy-based pointing game"),
    "grid_pointing_game": (True, "Grid pointing game"),
    "sparsity": (True, "Gini sparsity (descriptor)"),
    "entropy": (False, "Entropy, nats (descriptor)"),
    "sanity_spearman": (False, "Spearman to the original after cascading randomisation"),
    "sanity_ssim": (False, "SSIM to the original after cascading randomisation"),
    "sanity_hog": (False, "HOG Spearman after cascading randomisation"),
}
for _kind in ("random", "pgd", "topk"):
    VALUES[f"stability_{_kind}_topk"] = (True, f"{_kind} attack: top-k intersection")
    VALUES[f"stability_{_kind}_spearman"] = (True, f"{_kind} attack: Spearman")
    VALUES[f"stability_{_kind}_ssim"] = (True, f"{_kind} attack: SSIM")
    VALUES[f"stability_{_kind}_com_shift"] = (False, f"{_kind} attack: centre-of-mass shift, px")
    VALUES[f"stability_{_kind}_steps"] = (True, f"{_kind} attack: label-preserving steps taken")

METRIC_GROUPS = [
    "confidence",
    "deletion",
    "insertion",
    "road",
    "pointing",
    "energy_pointing",
    "grid_pointing",
    "stability",
    "sanity",
    "complexity",
]
DEFAULT_METRICS = ["confidence", "deletion", "insertion", "complexity"]


@dataclass
class BenchmarkConfig:
    """Settings of one benchmark run; every parameter of the protocols is here.

    ``steps`` None means one deletion/insertion step per image row (n = 224 at 224×224).
    """

    data_dir: Path
    out: Path = Path("sacam-benchmark")
    model: str | None = None
    weights: str | None = None
    trust_model_file: bool = False
    image_size: int | None = None
    methods: list[str] = field(default_factory=lambda: ["grad-cam", "grad-cam++", "sa-cam"])
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    limit: int | None = None
    use_labels: bool = False
    steps: int | None = None
    batch_size: int | Literal["auto"] = "auto"
    road_percentages: tuple[float, ...] = road.PERCENTAGES
    annotations: Path | None = None
    tolerance: float = 15.0
    grid_n: int = 2
    grid_threshold: float = 0.99
    grid_count: int | None = None
    grid_smooth: int = 0
    attacks: tuple[str, ...] = ("pgd",)
    eps: float = 8 / 255
    attack_step: float = 0.5 / 255
    iterations: int = 100
    topk: int = 1000
    sanity_layers: int = 6
    seed: int = 0
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The settings that change the numbers (compared when resuming)."""
        d = asdict(self)
        for key in ("out", "limit", "data_dir", "methods", "trust_model_file"):
            d.pop(key)
        d["road_percentages"] = list(self.road_percentages)
        d["attacks"] = list(self.attacks)
        d["annotations"] = str(self.annotations) if self.annotations else None
        return d


class _Writer:
    """Append-only CSV/JSONL outputs, flushed after every (image, method) pair."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.results = out / "results.csv"
        self.curves = out / "curves.jsonl"
        self.failures = out / "failures.csv"
        for path, header in (
            (self.results, "image,method,metric,value"),
            (self.failures, "image,method,error"),
        ):
            if not path.exists():
                path.write_text(header + "\n")

    def done_pairs(self) -> set[tuple[str, str]]:
        """Pairs whose last row (``time_s``) was written; drops rows of unfinished pairs."""
        rows = list(csv.DictReader(self.results.open()))
        done = {(r["image"], r["method"]) for r in rows if r["metric"] == "time_s"}
        kept = [r for r in rows if (r["image"], r["method"]) in done]
        if len(kept) != len(rows):
            with self.results.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["image", "method", "metric", "value"])
                w.writeheader()
                w.writerows(kept)
        return done

    def pair(
        self, image: str, method: str, values: dict[str, float], curves: dict[str, list]
    ) -> None:
        """Write one finished pair (``time_s`` last marks it complete)."""
        with self.curves.open("a") as f:
            for kind, curve in curves.items():
                f.write(
                    json.dumps({"image": image, "method": method, "kind": kind, "values": curve})
                    + "\n"
                )
        with self.results.open("a", newline="") as f:
            w = csv.writer(f)
            for name, val in values.items():
                if name != "time_s":
                    w.writerow([image, method, name, repr(float(val))])
            w.writerow([image, method, "time_s", repr(float(values["time_s"]))])

    def failure(self, image: str, method: str, error: str) -> None:
        """Record a failed pair."""
        with self.failures.open("a", newline="") as f:
            csv.writer(f).writerow([image, method, error])


def _read_labels(data_dir: Path, limit: int | None) -> list[dict[str, str]]:
    labels = data_dir / "labels.csv"
    if not labels.is_file():
        raise InputError(
            f"{labels} not found: DATA_DIR needs a labels.csv with columns file,class_index"
        )
    with labels.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0] or "class_index" not in rows[0]:
        raise InputError(f"{labels} needs the columns file,class_index")
    return rows[:limit]


def _check_metrics(names: Iterable[str], config: BenchmarkConfig) -> list[str]:
    chosen = list(METRIC_GROUPS) if "all" in names else list(dict.fromkeys(names))
    unknown = [m for m in chosen if m not in METRIC_GROUPS]
    if unknown:
        raise SacamError(f"unknown metric(s) {unknown}; valid: {', '.join(METRIC_GROUPS)}, all")
    if config.annotations is None:
        needs = [m for m in chosen if m in ("pointing", "energy_pointing")]
        if needs and "all" not in names:
            raise SacamError(f"{needs} need boxes or masks: pass --annotations FILE (CSV or JSON)")
        chosen = [m for m in chosen if m not in ("pointing", "energy_pointing")]
    return chosen


def run_benchmark(config: BenchmarkConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a benchmark and write every output file; returns the summary.

    Example:
        >>> from pathlib import Path
        >>> cfg = BenchmarkConfig(Path("imagenet-dev"), methods=["grad-cam"], limit=5)
        >>> cfg.metrics
        ['confidence', 'deletion', 'insertion', 'complexity']
    """
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    chosen = _check_metrics(config.metrics, config)
    for m in config.methods:
        method_info(m)  # unknown names fail before any work, listing the valid ones
    rows = _read_labels(config.data_dir, config.limit)
    run_file = out / "run.json"
    settings = config.settings() | {"metrics": chosen}
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous != json.loads(json.dumps(settings)):
            raise SacamError(
                f"{out} holds results of a run with other settings; use another --out or delete it"
            )
    run_file.write_text(json.dumps(settings, indent=1))
    lm = load_model(config.model, weights=config.weights, trust_model_file=config.trust_model_file)
    if config.image_size is not None:
        lm = with_preprocess(lm, size=config.image_size)
    cams = {
        m: build_method(lm.model, m, None, **config.method_options.get(m, {}))
        for m in config.methods
    }
    annotations = localization.load_annotations(config.annotations) if config.annotations else {}
    writer = _Writer(out)
    done = writer.done_pairs()
    predictions = _predictions(out, rows, lm, config)
    per_image = [m for m in chosen if m != "grid_pointing"]
    todo = [(r, m) for r in rows for m in config.methods if (r["file"], m) not in done]
    bar = tqdm(
        total=len(rows) * len(config.methods),
        initial=len(rows) * len(config.methods) - len(todo),
        unit="pair",
        desc="benchmark",
        disable=not progress or None,
    )
    try:
        for row, method in todo:
            name = row["file"]
            try:
                image = load_image(config.data_dir / name)
                x = lm.preprocess(image)[None]
                target = (
                    int(row["class_index"]) if config.use_labels else int(predictions[name]["top1"])
                )
                values, curves = _evaluate(
                    lm,
                    cams[method],
                    x,
                    target,
                    per_image,
                    config,
                    annotations.get(name),
                    image.size,
                )
                writer.pair(name, method, values, curves)
            except Exception as exc:  # recorded and skipped, not fatal
                writer.failure(name, method, f"{type(exc).__name__}: {exc}".replace("\n", " "))
                if not isinstance(exc, SacamError | OSError | RuntimeError | ValueError):
                    traceback.print_exc()
            bar.update(1)
        if "grid_pointing" in chosen:
            _grid_pointing(lm, cams, rows, predictions, writer, config, done)
    finally:
        bar.close()
    summary = summarize(out, config, lm, settings, predictions)
    _figures(out, lm, cams, rows, config)
    _report(out, summary)
    return summary


def _predictions(
    out: Path, rows: list[dict[str, str]], lm: LoadedModel, config: BenchmarkConfig
) -> dict[str, dict]:
    path = out / "predictions.csv"
    known: dict[str, dict] = {}
    if path.exists():
        known = {r["file"]: r for r in csv.DictReader(path.open())}
    missing = [r for r in rows if r["file"] not in known]
    for r in missing:
        try:
            x = lm.preprocess(load_image(config.data_dir / r["file"]))[None]
        except InputError:
            continue
        with torch.inference_mode():
            p = torch.softmax(lm.model(x).float(), 1)[0]
        known[r["file"]] = {
            "file": r["file"],
            "label": r["class_index"],
            "top1": str(int(p.argmax())),
            "prob": f"{float(p.max()):.6f}",
            "label_prob": f"{float(p[int(r['class_index'])]):.6f}",
        }
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "top1", "prob", "label_prob"])
        w.writeheader()
        w.writerows(known.values())
    return known


def _evaluate(
    lm: LoadedModel,
    cam: Any,
    x: torch.Tensor,
    target: int,
    chosen: list[str],
    config: BenchmarkConfig,
    ann: localization.Annotation | None,
    image_size: tuple[int, int],
) -> tuple[dict[str, float], dict[str, list]]:
    model, pre = lm.model, lm.preprocess
    t0 = time.perf_counter()
    maps = cam(x, target)
    elapsed = time.perf_counter() - t0
    tgt = torch.tensor([target])
    values: dict[str, float] = {}
    curves: dict[str, list] = {}
    if "confidence" in chosen:
        for k, v in metrics.confidence_change(model, x, maps, tgt, preprocess=pre).items():
            values[k] = float(v[0])
    if "deletion" in chosen:
        res = metrics.deletion(
            model, x, maps, tgt, steps=config.steps, batch_size=config.batch_size, seed=config.seed
        )
        values["deletion"], curves["deletion"] = float(res.auc[0]), res.curves[0].tolist()
    if "insertion" in chosen:
        res = metrics.insertion(
            model, x, maps, tgt, steps=config.steps, batch_size=config.batch_size, seed=config.seed
        )
        values["insertion"], curves["insertion"] = float(res.auc[0]), res.curves[0].tolist()
    if "road" in chosen:
        r = road.road(
            model, x, maps, pre, tgt, percentages=config.road_percentages, seed=config.seed
        )
        values["road_morf"], values["road_lerf"] = float(r.morf_mean[0]), float(r.lerf_mean[0])
        values["road_gap"] = float(r.gap[0])
        curves["road_morf"], curves["road_lerf"] = r.morf[0].tolist(), r.lerf[0].tolist()
    if ann is not None and ("pointing" in chosen or "energy_pointing" in chosen):
        mask = localization.annotation_mask(ann, image_size, pre)[None]
        if "pointing" in chosen:
            values["pointing_game"] = float(
                localization.pointing_game(maps, mask, config.tolerance)[0]
            )
        if "energy_pointing" in chosen:
            values["energy_pointing_game"] = float(localization.energy_pointing_game(maps, mask)[0])
    if "stability" in chosen:
        for kind in config.attacks:
            res_s = robustness.stability(
                model,
                x,
                lambda imgs, cls: cam(imgs, cls),
                pre,
                kind,  # type: ignore[arg-type]
                eps=config.eps,
                step=config.attack_step,
                iterations=config.iterations,
                k=config.topk,
                seed=config.seed,
            )
            for key, name in (
                ("topk_intersection", "topk"),
                ("spearman", "spearman"),
                ("ssim", "ssim"),
                ("com_shift", "com_shift"),
                ("steps", "steps"),
            ):
                values[f"stability_{kind}_{name}"] = float(res_s[key][0])
    if "sanity" in chosen:
        method = type(cam).name
        res_c = sanity.sanity_check(
            model,
            x,
            lambda m, imgs: build_method(m, method, None, **config.method_options.get(method, {}))(
                imgs, target
            ),
            "cascading",
            max_layers=config.sanity_layers,
            seed=config.seed,
        )
        values["sanity_spearman"] = float(res_c.spearman_abs[0, -1])
        values["sanity_ssim"] = float(res_c.ssim[0, -1])
        values["sanity_hog"] = float(res_c.hog_spearman[0, -1])
        curves["sanity_spearman"] = res_c.spearman_abs[0].tolist()
    if "complexity" in chosen:
        values["sparsity"] = float(metrics.gini(maps)[0])
        values["entropy"] = float(metrics.entropy(maps)[0])
    values["time_s"] = elapsed
    return values, curves


def _grid_pointing(
    lm: LoadedModel,
    cams: dict[str, Any],
    rows: list[dict[str, str]],
    predictions: dict[str, dict],
    writer: _Writer,
    config: BenchmarkConfig,
    done: set[tuple[str, str]],
) -> None:
    confident = [
        (i, int(predictions[r["file"]]["top1"]))
        for i, r in enumerate(rows)
        if r["file"] in predictions
        and predictions[r["file"]]["top1"] == r["class_index"]
        and float(predictions[r["file"]]["prob"]) >= config.grid_threshold
    ]
    grids = localization.make_grids(confident, config.grid_n, config.grid_count, config.seed)
    n = config.grid_n
    for g, members in enumerate(grids):
        name = f"grid-{g:03d}"
        x = torch.stack(
            [lm.preprocess(load_image(config.data_dir / rows[i]["file"])) for i in members]
        )
        grid = localization.tile(x, n)
        classes = [int(rows[i]["class_index"]) for i in members]
        for method, cam in cams.items():
            if (name, method) in done:
                continue
            try:
                t0 = time.perf_counter()
                maps = cam(grid.expand(n * n, -1, -1, -1), classes)
                elapsed = time.perf_counter() - t0
                scores = localization.grid_pointing_game(maps, n, config.grid_smooth)
                writer.pair(
                    name,
                    method,
                    {"grid_pointing_game": float(scores.mean()), "time_s": elapsed / (n * n)},
                    {},
                )
            except Exception as exc:
                writer.failure(name, method, f"{type(exc).__name__}: {exc}")


def summarize(
    out: Path,
    config: BenchmarkConfig,
    lm: LoadedModel,
    settings: dict[str, Any],
    predictions: dict[str, dict],
) -> dict[str, Any]:
    """Write summary.json and summary.md from results.csv; returns the summary."""
    by: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    for r in csv.DictReader((out / "results.csv").open()):
        by[(r["method"], r["metric"])].append((r["image"], float(r["value"])))
    table: dict[str, dict[str, Any]] = {}
    for (method, metric), pairs in by.items():
        vals = [v for _, v in pairs]
        if metric == "pointing_game":  # accuracy per class, then the mean over classes
            per_class: dict[str, list[float]] = defaultdict(list)
            for image, v in pairs:
                if math.isfinite(v):
                    per_class[predictions.get(image, {}).get("label", "?")].append(v)
            vals = [sum(v) / len(v) for v in per_class.values()]
        if metric == "time_s":
            vals = [v for img, v in pairs if not img.startswith("grid-")]
        stats: dict[str, Any] = dict(metrics.mean_ci(vals))
        higher = VALUES.get(metric, (False, ""))[0]
        stats["higher_is_better"] = higher
        table.setdefault(method, {})[metric] = stats
    failures = list(csv.DictReader((out / "failures.csv").open()))
    summary = {
        "settings": settings
        | {
            "model": lm.name,
            "images": len(
                {
                    r["image"]
                    for r in csv.DictReader((out / "results.csv").open())
                    if not r["image"].startswith("grid-")
                }
            ),
            "methods": config.methods,
            "scores": "softmax probabilities",
            "class": "labelled class" if config.use_labels else "top-1 on the clean image",
            "versions": {
                p: _version(p) for p in ("sacam", "torch", "numpy", "scikit-image", "scipy")
            },
            "python": platform.python_version(),
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        },
        "table": table,
        "failures": len(failures),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(render_markdown(summary) + "\n")
    return summary


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except Exception:
        return "?"


def render_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (rows: methods; columns: metrics with arrows)."""
    table = summary["table"]
    metrics_seen = [m for m in VALUES if any(m in t for t in table.values())]
    head = (
        "| method | "
        + " | ".join(f"{m} {'↑' if VALUES[m][0] else '↓'}" for m in metrics_seen)
        + " | s / image |"
    )
    lines = [head, "|---" * (len(metrics_seen) + 2) + "|"]
    for method, t in table.items():
        cells = []
        for m in metrics_seen:
            s = t.get(m)
            cells.append("–" if s is None else f"{s['mean']:.3f} ± {s['ci95']:.3f}")
        time_s = t.get("time_s", {}).get("mean", float("nan"))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {time_s:.3f} |")
    s = summary["settings"]
    lines.append("")
    lines.append(f"Mean ± 95% interval over images. {summary['failures']} failed pair(s).")
    lines.append("Settings: " + json.dumps(s, default=str))
    return "\n".join(lines)


def _curves(out: Path) -> dict[tuple[str, str], list[list[float]]]:
    acc: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    if (out / "curves.jsonl").exists():
        for line in (out / "curves.jsonl").read_text().splitlines():
            d = json.loads(line)
            acc[(d["method"], d["kind"])].append(d["values"])
    return acc


def _plot_mean_curves(
    path: Path,
    curves: dict[tuple[str, str], list[list[float]]],
    kinds: list[str],
    xs: Callable[[int], list[float]],
    xlabel: str,
) -> Path | None:
    present = [k for k in kinds if any(kind == k for _, kind in curves)]
    if not present:
        return None
    grid = {"nrows": 1, "ncols": len(present), "figsize": (5 * len(present), 3.6)}
    with saved_figure(path, dpi=90, squeeze=False, **grid) as (_, axes):
        for ax, kind in zip(axes[0], present, strict=True):
            for (method, k), cs in curves.items():
                if k != kind:
                    continue
                length = min(len(c) for c in cs)
                mean = torch.tensor([c[:length] for c in cs]).mean(0).tolist()
                ax.plot(xs(length), mean, label=method)
            ax.set_title(kind)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("class probability")
            ax.legend(fontsize=7)
    return path


def _figures(
    out: Path,
    lm: LoadedModel,
    cams: dict[str, Any],
    rows: list[dict[str, str]],
    config: BenchmarkConfig,
) -> None:
    curves = _curves(out)
    _plot_mean_curves(
        out / "deletion_insertion.png",
        curves,
        ["deletion", "insertion"],
        lambda n: torch.linspace(0, 1, n).tolist(),
        "fraction of pixels",
    )
    pct = list(config.road_percentages)
    _plot_mean_curves(out / "road.png", curves, ["road_morf", "road_lerf"], lambda n: pct[:n], "p")
    summary = json.loads((out / "summary.json").read_text())
    names = [m for m in VALUES if any(m in t for t in summary["table"].values())]
    if names:
        cols = min(4, len(names))
        nrows = math.ceil(len(names) / cols)
        size = (3.6 * cols, 2.8 * nrows)
        with saved_figure(
            out / "metrics.png", dpi=90, nrows=nrows, ncols=cols, figsize=size, squeeze=False
        ) as (_, axes):
            for ax, m in zip(axes.flat, names, strict=False):
                methods = [k for k, t in summary["table"].items() if m in t]
                means = [summary["table"][k][m]["mean"] for k in methods]
                errs = [summary["table"][k][m]["ci95"] for k in methods]
                ax.bar(range(len(methods)), means, yerr=errs, color="tab:blue")
                ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
                ax.set_title(f"{m} {'↑' if VALUES[m][0] else '↓'}", fontsize=8)
            for ax in list(axes.flat)[len(names) :]:
                ax.axis("off")
    examples = []
    for r in rows[:4]:
        try:
            examples.append(load_image(config.data_dir / r["file"]))
        except InputError:
            continue
    if examples:
        x = lm.preprocess.batch(examples)
        maps = {m: cam(x).cpu() for m, cam in cams.items()}
        save_grid(
            [lm.preprocess.pixels(e) for e in examples],
            maps,
            out / "examples.png",
            titles=[r["file"] for r in rows[: len(examples)]],
        )


def _report(out: Path, summary: dict[str, Any]) -> None:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>sacam benchmark</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>",
        "<h1>sacam benchmark</h1>",
    ]
    table = summary["table"]
    names = [m for m in VALUES if any(m in t for t in table.values())] + ["time_s"]
    parts.append(
        "<table><tr><th>method</th>"
        + "".join(
            f"<th>{html.escape(m)} {'↑' if VALUES.get(m, (False,))[0] else '↓'}</th>" for m in names
        )
        + "</tr>"
    )
    for method, t in table.items():
        cells = "".join(
            f"<td>{t[m]['mean']:.3f} ± {t[m]['ci95']:.3f}</td>" if m in t else "<td>–</td>"
            for m in names
        )
        parts.append(f"<tr><th>{html.escape(method)}</th>{cells}</tr>")
    parts.append("</table><p>Mean ± 95% interval over images.</p>")
    for png in ("deletion_insertion.png", "road.png", "metrics.png", "examples.png"):
        path = out / png
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<h2>{png[:-4]}</h2><img src='data:image/png;base64,{data}'>")
    parts.append(
        "<h2>Settings</h2><pre>"
        + html.escape(json.dumps(summary["settings"], indent=1, default=str))
        + "</pre>"
    )
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts))
