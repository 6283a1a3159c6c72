"""glibc's defaults against :func:`sacam.keep_freed_memory`, in the same run.

Usage:

    python benchmarks/allocator.py                               # SS-CAM, one thread
    python benchmarks/allocator.py --threads 2 --repeat 3
    python benchmarks/allocator.py --data ../shared/data/imagenet-dev --limit 8

Each row runs in a fresh child process, alternating the two settings ``--repeat`` times:
"glibc defaults" sets ``SACAM_KEEP_FREED_MEMORY=0`` (sacam leaves glibc as it starts; a
``MALLOC_*`` variable would not do: setting ``MALLOC_MMAP_MAX_`` also switches off glibc's
sliding mmap threshold, which makes the defaults slower than they are), "freed memory
kept" calls ``keep_freed_memory()`` (the ``sacam`` command does so itself). Workloads:

- ``ss-cam``: one SS-CAM call (``n_samples=1``, 320 masked forward passes) at
  ``_blocks.15`` of EfficientNet-Lite0 on the sample photo "chelsea", timed after a
  warm-up call (which measures the batch plan); the maps of the two settings are compared.
- with ``--data DIR``: the command ``sacam benchmark DIR --methods grad-cam sa-cam
  score-cam --layer _blocks.15 --metrics confidence deletion insertion --limit N
  --images-per-step 8 --steps 16``, timed whole (model loading included), into a temporary folder.

It prints wall, user and system seconds, the child's minor page faults over the timed
part and its peak resident set, then the ratio of the medians (defaults / kept; above 1
means keeping freed memory is faster). Linux with glibc only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from sacam._speed.allocator import on_glibc

SETTINGS = ("glibc defaults", "freed memory kept")


def _usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one workload in this (fresh) process under one setting; its costs."""
    import sacam
    from sacam._speed.allocator import keep_freed_memory
    from sacam.cli import main as cli
    from sacam.images import load_image
    from sacam.models import load_model

    torch.set_num_threads(spec["threads"])
    kept = keep_freed_memory(spec["keep_mb"]) if spec["setting"] == SETTINGS[1] else False
    out: dict[str, Any] = {"kept": kept}
    if spec["workload"] == "ss-cam":
        lm = load_model()
        x = lm.preprocess.batch([load_image("sample:chelsea")])
        cam = sacam.build_method(
            lm.model, "ss-cam", "_blocks.15", n_samples=1, top_channels=spec["channels"]
        )
        cam(x)
        u0, s0, f0 = _usage()
        t0 = time.perf_counter()
        m = cam(x)
        wall = time.perf_counter() - t0
        torch.save(m, spec["map"])
    else:
        u0, s0, f0 = _usage()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            code = cli([*spec["command"], "--out", tmp])
        wall = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"sacam benchmark exited {code}")
    u1, s1, f1 = _usage()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(wall=wall, user=u1 - u0, sys=s1 - s0, faults=f1 - f0, peak_mb=peak_mb)
    return out


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    if spec["setting"] == SETTINGS[0]:
        env["SACAM_KEEP_FREED_MEMORY"] = "0"  # glibc as it starts (no MALLOC_* setting)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Alternate the two settings per workload and print the table and the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting and workload")
    ap.add_argument("--keep-mb", type=int, default=1024, help="keep_freed_memory(keep_mb)")
    ap.add_argument("--data", help="an image folder: also time `sacam benchmark` on it")
    ap.add_argument("--limit", type=int, default=8, help="images of --data")
    ap.add_argument("--channels", type=int, default=None, help="SS-CAM's top_channels (all)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if not on_glibc():
        raise SystemExit("this benchmark compares glibc settings: Linux with glibc only")
    workloads: dict[str, list[str] | None] = {"ss-cam": None}
    if args.data:
        workloads["sacam benchmark"] = [
            "benchmark", args.data, "--methods", "grad-cam", "sa-cam", "score-cam",
            "--layer", "_blocks.15", "--metrics", "confidence", "deletion", "insertion",
            "--limit", str(args.limit), "--images-per-step", "8", "--steps", "16",
        ]  # fmt: skip
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), glibc {platform.libc_ver()[1]}, keep_mb={args.keep_mb}"
    )
    print("| workload | setting | wall s | user s | sys s | minor faults | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in workloads.items():
            walls: dict[str, list[float]] = {s: [] for s in SETTINGS}
            for i in range(args.repeat * 2):
                setting = SETTINGS[i % 2]
                spec = {
                    "workload": "ss-cam" if command is None else "command",
                    "command": command,
                    "setting": setting,
                    "threads": args.threads,
                    "keep_mb": args.keep_mb,
                    "channels": args.channels,
                    "map": f"{tmp}/{i % 2}.pt",
                }
                r = _run_child(spec)
                if r["kept"] != (setting == SETTINGS[1]):
                    raise SystemExit(f"{setting}: keep_freed_memory() returned {r['kept']}")
                walls[setting].append(r["wall"])
                print(
                    f"| {name} | {setting} | {r['wall']:.2f} | {r['user']:.2f} | "
                    f"{r['sys']:.2f} | {r['faults']:,} | {r['peak_mb']:.0f} |",
                    flush=True,
                )
            ratio = statistics.median(walls[SETTINGS[0]]) / statistics.median(walls[SETTINGS[1]])
            ratios.append(f"{name} {ratio:.2f}×")
            if command is None:
                diff = (torch.load(f"{tmp}/0.pt") - torch.load(f"{tmp}/1.pt")).abs().max()
                ratios.append(f"(its maps: max |Δ| = {float(diff):.3g})")
    print(f"\nwall-time ratio of the medians, defaults / kept: {'; '.join(ratios)}")


if __name__ == "__main__":
    main()
