"""``sacam explain``: images (overlay PNGs and a comparison grid) or a whole folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from .._outputs import probabilities
from ..api import build_method
from ..errors import InputError, SacamError
from ..evaluation.explain_folder import output_stem
from ..images import SAMPLE_IMAGES, load_image
from ..models import LoadedModel
from ..viz import overlay, save_grid
from ._args import (
    EXIT_IMAGE,
    add_method_options,
    add_model_options,
    cmap,
    default_method,
    device_arg,
    int_at_least,
    layer_of,
    method_options,
    model_source,
    out_dir,
    unit_float,
)
from ._benchmark import add_engine_options, ray_engine_options
from ._classes import resolve_target
from ._model import add_preprocess_options, cli_model
from ._segment import segmentation_command
from ._tasks import TASK_METHOD, add_task_options, check_task_options, detection_command

GRID_ROWS = 8
PREDICTIONS_SHOWN = 20


def add_explain_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``explain`` subcommand and its options to ``sub``."""
    ex = sub.add_parser("explain", help="explain images and write overlay PNGs")
    ex.add_argument(
        "images",
        nargs="*",
        help="image files, or one folder; 'sample:NAME' for a scikit-image photo; none: "
        f"the sample photos ({', '.join(SAMPLE_IMAGES)})",
    )
    add_model_options(ex)
    add_preprocess_options(ex)
    add_method_options(ex, default_method())
    ex.add_argument(
        "--target",
        default=None,
        help="class index or class name, in any case, e.g. 285 or 'egyptian cat' "
        "(default: each image's top-1 class)",
    )
    ex.add_argument(
        "--activation",
        choices=["softmax", "sigmoid", "none"],
        default=None,
        help="what the model's scores mean: softmax (one class per image), sigmoid "
        "(independent labels) or none (probabilities); default: sigmoid for one logit, "
        "none after an nn.Sigmoid, else softmax",
    )
    ex.add_argument(
        "--out", type=out_dir, default="sacam-out", help="output folder (default: sacam-out)"
    )
    ex.add_argument("--resize", choices=["crop", "squash"], default=None, help="image resize mode")
    ex.add_argument(
        "--images-per-step",
        type=int_at_least(1),
        default=8,
        help="images explained per step (default: 8)",
    )
    ex.add_argument("--cmap", type=cmap, default="jet", help="matplotlib colour map (default: jet)")
    ex.add_argument(
        "--alpha", type=unit_float, default=0.5, help="overlay opacity in [0, 1] (default: 0.5)"
    )
    ex.add_argument(
        "--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N, mps"
    )
    ex.add_argument(
        "--save-maps",
        action="store_true",
        help="folder mode: also write each map (float16 .npy) beside its overlay",
    )
    ex.add_argument(
        "--workers",
        type=int_at_least(1),
        default=None,
        help="folder mode with --engine ray: Ray workers",
    )
    add_engine_options(ex)
    add_task_options(ex)


def _explain_folder(args: argparse.Namespace, methods: list[str]) -> int:
    """``sacam explain DIR``: every image of a folder, locally or on Ray."""
    from ..evaluation.explain_folder import ExplainJob, explain_folder, read_predictions

    options = ray_engine_options(args)
    if options is None and args.workers is not None:
        raise SacamError("--workers needs --engine ray")
    loaded = cli_model(args)
    target = None if args.target is None else resolve_target(args.target, loaded.class_names)
    pre = loaded.preprocess
    job = ExplainJob(
        data_dir=Path(args.images[0]),
        out=Path(args.out),
        methods=tuple(methods),
        **model_source(args),
        layer=layer_of(args),
        target=target,
        resize=args.resize,
        images_per_step=args.images_per_step,
        device=args.device,
        save_maps=args.save_maps,
        cmap=args.cmap,
        alpha=args.alpha,
        size=pre.size,
        mean=tuple(pre.mean),
        std=tuple(pre.std),
        class_names=tuple(loaded.class_names),
        method_options=tuple(
            (m, tuple(sorted(o.items()))) for m, o in method_options(args).items()
        ),
    )
    if target is not None:
        print(f"explaining class {target} ({loaded.class_name(target)}) in every image")
    engine = None
    if options is not None:
        from ..evaluation.ray_engine import ray_explain_engine

        engine = ray_explain_engine(options)
    n, failed = explain_folder(job, engine)
    rows = read_predictions(job.out)
    for row in rows[:PREDICTIONS_SHOWN]:
        print(f"{row['image']}: {row['class_name']} ({float(row['probability']):.3f})")
    if len(rows) > PREDICTIONS_SHOWN:
        print(f"... {len(rows) - PREDICTIONS_SHOWN} more")
    what = "overlays and maps" if args.save_maps else "overlays"
    print(f"{n} image(s) × {len(methods)} method(s): {what} in {job.out}/")
    print(f"predictions (top-1 class and probability per image): {job.out / 'predictions.csv'}")
    if failed:
        print(f"{failed} failed (image, method) pair(s): see {job.out / 'failures.csv'}")
    return EXIT_IMAGE if failed else 0


def _image_names(sources: Sequence[str]) -> list[str]:
    """Unique output names for the sources (file stems, numbered when they repeat)."""
    names: list[str] = []
    for src in sources:
        stem = src.split(":", 1)[1] if src.startswith("sample:") else Path(src).stem
        name, k = stem, 1
        while name in names:
            k += 1
            name = f"{stem}-{k}"
        names.append(name)
    return names


class Shot:
    """One image's map of one method: the class, probability and layer it explains."""

    def __init__(self, image: str, method: str, cls: int, label: str, prob: float) -> None:
        self.image, self.method, self.cls, self.label, self.prob = image, method, cls, label, prob
        self.layers = ""

    @property
    def title(self) -> str:
        """``chelsea: Egyptian cat (285) 0.77, sa-cam at blocks.15``."""
        head = f"{self.image}: {self.label} ({self.cls}) {self.prob:.2f}"
        return f"{head}, {self.method} at {self.layers}"

    def file_name(self, args: argparse.Namespace) -> str:
        """``chelsea_sa-cam.png``; with ``--target``/``--layer`` the class and layer join it."""
        label = self.label if args.target is not None else None
        return output_stem(self.image, self.method, label, args.layers) + ".png"


def _write_pngs(
    args: argparse.Namespace,
    out: Path,
    pixels: list[torch.Tensor],
    maps: dict[str, torch.Tensor],
    shots: dict[str, list[Shot]],
) -> list[Path]:
    """Write one overlay per image and method, and comparison grids for several methods."""
    written: list[Path] = []
    for m, row in shots.items():
        for i, shot in enumerate(row):
            path = out / shot.file_name(args)
            meta = PngInfo()
            meta.add_text("Title", shot.title)
            overlay(pixels[i], maps[m][i], cmap=args.cmap, alpha=args.alpha).save(
                path, pnginfo=meta
            )
            written.append(path)
    if len(maps) > 1:
        first = next(iter(shots.values()))
        titles = [f"{s.image}: {s.label} {s.prob:.2f}" for s in first]
        pages = range(0, len(pixels), GRID_ROWS)
        for page, start in enumerate(pages, start=1):
            rows = slice(start, start + GRID_ROWS)
            suffix = "" if len(pages) == 1 else f"-{page:02d}"
            written.append(
                save_grid(
                    pixels[rows],
                    {m: v[rows] for m, v in maps.items()},
                    out / f"comparison{suffix}.png",
                    titles=titles[rows],
                    cmap=args.cmap,
                    alpha=args.alpha,
                )
            )
    return written


def _read_images(sources: Sequence[str], size: int, loaded: LoadedModel) -> tuple[list, list]:
    """The readable sources and their pixels; each unreadable one reported on one line."""
    pixels: list[torch.Tensor] = []
    readable: list[str] = []
    for src in sources:
        try:
            pixels.append(loaded.preprocess.pixels(load_image(src, draft_size=(size, size))))
            readable.append(src)
        except InputError as exc:
            print(f"sacam: error: {exc}", file=sys.stderr)
    return readable, pixels


def _explain_step(
    args: argparse.Namespace,
    loaded: LoadedModel,
    cams: dict[str, Any],
    x: torch.Tensor,
    names: list[str],
    target: int | None,
) -> tuple[dict[str, torch.Tensor], dict[str, list[Shot]]]:
    """One step: top-5 printed per image, then each method's maps with what they explain."""
    wrapped = next(iter(cams.values())).logits_model  # with the methods' --activation
    with torch.inference_mode():
        probs = probabilities(wrapped, wrapped(x))
    top = probs.topk(min(5, probs.shape[1]), dim=1)
    targets = target if target is not None else top.indices[:, 0]
    for b, name in enumerate(names):
        ranked = ", ".join(
            f"{loaded.class_name(int(i))} ({p:.3f})"
            for p, i in zip(top.values[b].tolist(), top.indices[b].tolist(), strict=True)
        )
        tqdm.write(f"{name}: top-5 {ranked}")
    maps: dict[str, torch.Tensor] = {}
    shots: dict[str, list[Shot]] = {}
    for m, cam in cams.items():
        result = cam.explain(x, targets)
        maps[m] = result.maps.detach().cpu()
        shots[m] = []
        for b, name in enumerate(names):
            cls = int(targets if isinstance(targets, int) else targets[b])
            shot = Shot(name, m, cls, loaded.class_name(cls), float(probs[b, cls]))
            shot.layers = "+".join(result.layers)
            shots[m].append(shot)
    return maps, shots


def explain_command(args: argparse.Namespace) -> int:
    """Run ``sacam explain``; returns the exit code."""
    check_task_options(args)
    if args.task != "classification":
        task = detection_command if args.task == "detection" else segmentation_command
        return task(args, list(dict.fromkeys(args.methods or [TASK_METHOD])))
    methods = list(dict.fromkeys(args.methods or [default_method()]))
    if len(args.images) == 1 and Path(args.images[0]).is_dir():
        return _explain_folder(args, methods)
    if args.engine == "ray" or args.save_maps:
        flag = "--engine ray" if args.engine == "ray" else "--save-maps"
        raise SacamError(f"{flag} explains a folder: pass one DIR of images")
    ray_engine_options(args)  # refuses --address and the other Ray options
    if args.workers is not None:
        raise SacamError("--workers needs a folder (DIR) and --engine ray")
    loaded = cli_model(args)
    target = None if args.target is None else resolve_target(args.target, loaded.class_names)
    options = method_options(args)
    cams = {m: build_method(loaded.model, m, layer_of(args), **options.get(m, {})) for m in methods}
    size = loaded.preprocess.size
    # each image is reduced to the model's input at once: only one decoded image is held
    sources = list(args.images) or [f"sample:{s}" for s in SAMPLE_IMAGES]
    readable, pixels = _read_images(sources, size, loaded)
    if not pixels:
        return EXIT_IMAGE
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SacamError(f"cannot create the output folder {out}: {exc}") from None
    names = _image_names(readable)
    maps: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    shots: dict[str, list[Shot]] = {m: [] for m in methods}
    step = args.images_per_step
    with tqdm(total=len(pixels), unit="image", desc="explaining", disable=None) as bar:
        for start in range(0, len(pixels), step):
            x = loaded.preprocess.normalize(torch.stack(pixels[start : start + step]))
            got, made = _explain_step(
                args, loaded, cams, x.to(args.device), names[start : start + step], target
            )
            for m in methods:
                maps[m].append(got[m])
                shots[m] += made[m]
            bar.update(len(got[methods[0]]))
    try:
        written = _write_pngs(args, out, pixels, {m: torch.cat(v) for m, v in maps.items()}, shots)
    except OSError as exc:
        raise SacamError(f"cannot write to the output folder {out}: {exc}") from None
    print(f"model {loaded.name}, method(s) {', '.join(methods)}")
    for m in methods:
        for shot in shots[m]:
            print(f"{shot.title} -> {out / shot.file_name(args)}")
    print(f"wrote {len(written)} PNG file(s) to {out}/")
    return EXIT_IMAGE if len(readable) < len(sources) else 0
