"""``sacam explain``: images (overlay PNGs and a comparison grid) or a whole folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from .._outputs import to_logits
from ..api import build_method
from ..errors import InputError, SacamError
from ..models import SAMPLE_IMAGES, load_image, load_model
from ..targets import parse_class
from ..viz import overlay, save_grid
from ._args import (
    EXIT_IMAGE,
    default_method,
)
from ._benchmark import ray_engine_options

GRID_ROWS = 8


def _explain_folder(args: argparse.Namespace) -> int:
    """``sacam explain DIR``: every image of a folder, locally or on Ray."""
    from ..evaluation.explain_folder import ExplainJob, explain_folder

    options = ray_engine_options(args)
    if options is None and args.workers is not None:
        raise SacamError("--workers needs --engine ray")
    methods = tuple(dict.fromkeys(args.method or [default_method()]))
    target = None
    if args.target is not None:
        loaded = load_model(
            args.model, weights=args.weights, trust_model_file=args.trust_model_file
        )
        target = parse_class(args.target, loaded.class_names, what="--target")
    job = ExplainJob(
        data_dir=Path(args.images[0]),
        out=Path(args.out),
        methods=methods,
        model=args.model,
        weights=args.weights,
        layer=args.layer if args.layer is None or len(args.layer) > 1 else args.layer[0],
        target=target,
        resize=args.resize,
        images_per_step=args.images_per_step,
        device=args.device,
        save_maps=args.save_maps,
        cmap=args.cmap,
        alpha=args.alpha,
        trust_model_file=args.trust_model_file,
    )
    engine = None
    if options is not None:
        from ..evaluation.ray_engine import ray_explain_engine

        engine = ray_explain_engine(options)
    n, failed = explain_folder(job, engine)
    what = "overlays and maps" if args.save_maps else "overlays"
    print(f"{n} image(s) × {len(methods)} method(s): {what} in {job.out}/")
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


def _write_pngs(
    args: argparse.Namespace,
    out: Path,
    names: list[str],
    pixels: list[torch.Tensor],
    maps: dict[str, torch.Tensor],
    titles: list[str],
) -> list[Path]:
    """Write one overlay per image and method, and comparison grids for several methods."""
    methods = list(maps)
    written: list[Path] = []
    for i, name in enumerate(names):
        for m in methods:
            path = out / f"{name}_{m}.png"
            overlay(pixels[i], maps[m][i], cmap=args.cmap, alpha=args.alpha).save(path)
            written.append(path)
    if len(methods) > 1:
        pages = range(0, len(names), GRID_ROWS)
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


def explain_command(args: argparse.Namespace) -> int:
    """Run ``sacam explain``; returns the exit code."""
    if len(args.images) == 1 and Path(args.images[0]).is_dir():
        return _explain_folder(args)
    if args.engine == "ray" or args.save_maps:
        flag = "--engine ray" if args.engine == "ray" else "--save-maps"
        raise SacamError(f"{flag} explains a folder: pass one DIR of images")
    ray_engine_options(args)  # refuses --address and the other Ray options
    if args.workers is not None:
        raise SacamError("--workers needs a folder (DIR) and --engine ray")
    sources = list(args.images) or [f"sample:{s}" for s in SAMPLE_IMAGES]
    methods = list(dict.fromkeys(args.method or [default_method()]))
    loaded = load_model(
        args.model,
        weights=args.weights,
        device=args.device,
        trust_model_file=args.trust_model_file,
        resize=args.resize,
    )
    target = (
        None
        if args.target is None
        else parse_class(args.target, loaded.class_names, what="--target")
    )
    layer = args.layer if args.layer is None or len(args.layer) > 1 else args.layer[0]
    cams = {m: build_method(loaded.model, m, layer) for m in methods}
    pre = loaded.preprocess
    out: Path = args.out
    # each image is reduced to the model's input at once: only one decoded image is held
    pixels: list[torch.Tensor] = []
    readable: list[str] = []
    unreadable = 0
    for src in sources:
        try:
            pixels.append(pre.pixels(load_image(src, draft_size=(pre.size, pre.size))))
            readable.append(src)
        except InputError as exc:
            print(f"sacam: error: {exc}", file=sys.stderr)
            unreadable += 1
    if not pixels:
        return EXIT_IMAGE
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SacamError(f"cannot create the output folder {out}: {exc}") from None
    sources = readable
    names = _image_names(sources)
    all_maps: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    titles: list[str] = []
    bar = tqdm(total=len(pixels), unit="image", desc="explaining", disable=None)
    try:
        for start in range(0, len(pixels), args.images_per_step):
            chunk = slice(start, start + args.images_per_step)
            x = pre.normalize(torch.stack(pixels[chunk])).to(args.device)
            with torch.inference_mode():
                logits = to_logits(loaded.model(x))
            probs = torch.softmax(logits.float(), dim=1)
            top = probs.topk(min(5, probs.shape[1]), dim=1)
            targets = target if target is not None else top.indices[:, 0]
            for m, cam in cams.items():
                all_maps[m].append(cam(x, targets).cpu())
            for b, name in enumerate(names[chunk]):
                cls = int(targets if isinstance(targets, int) else targets[b])
                ranked = ", ".join(
                    f"{loaded.class_name(int(i))} ({p:.3f})"
                    for p, i in zip(top.values[b].tolist(), top.indices[b].tolist(), strict=True)
                )
                tqdm.write(f"{name}: top-5 {ranked}")
                titles.append(f"{name}: {loaded.class_name(cls)} {float(probs[b, cls]):.2f}")
            bar.update(len(names[chunk]))
    finally:
        bar.close()
    maps = {m: torch.cat(v) for m, v in all_maps.items()}
    try:
        written = _write_pngs(args, out, names, pixels, maps, titles)
    except OSError as exc:
        raise SacamError(f"cannot write to the output folder {out}: {exc}") from None
    print(f"model {loaded.name}, method(s) {', '.join(methods)}")
    print(f"wrote {len(written)} PNG file(s) to {out}/:")
    for path in written:
        print(f"  {path}")
    if unreadable:  # each was reported on its own line above
        return EXIT_IMAGE
    return 0
