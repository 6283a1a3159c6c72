"""Peak memory of Score-CAM (or a tail method) against its ``max_memory_mb`` budget.

Usage:

    python benchmarks/memory.py                       # budgets 256, 512, 1024 MB
    python benchmarks/memory.py --budgets 256 --threads 2 --device cuda
    python benchmarks/memory.py --method ablation-cam  # rows of the network after the layer

``--method`` ablation-cam, fd-cam or recipro-cam runs that method at the head instead
(``strategy="expand"``: the rows per pass come from ``sacam._speed.memory.expand_cap``, and the
"batch" column is those rows).

Each budget runs in a fresh child process: load the default model (EfficientNet-Lite0)
and the sample photo "chelsea" at 224×224, return free C-allocator blocks to the system
(glibc ``malloc_trim``, so the baseline is live memory), read the resident set
(``VmRSS``), run one
Score-CAM call at the head layer with ``max_memory_mb=budget`` (``top_channels`` limits
the number of forward passes, not the batch: the batch is set by the budget), and read
the peak resident set (``VmHWM``, reset just before the call through
``/proc/self/clear_refs``; sacam's own memory measurement resets it too, so the peak
reached before each of those resets counts as well). It prints the peak above the RSS
before the call, its ratio to the budget (target: ≤ 1.25), the batch size the plan chose
and the measured cost.
On CUDA the peak is the allocator's (``torch.cuda.max_memory_allocated`` above
``memory_allocated`` before the call).

``--estimate`` replaces the measured cost by the shape estimate (sacam before the
measurement, for comparison in the same run). ``--keep-freed-memory`` makes the child
call :func:`sacam.keep_freed_memory` first, as the ``sacam`` command does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def status_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def child(spec: dict) -> dict:
    """One call of the method in this (fresh) process; its peak memory above the start."""
    import sacam
    from sacam._speed import memory
    from sacam._speed.allocator import keep_freed_memory, release_free_memory
    from sacam.images import sample_image
    from sacam.models import load_model

    torch.set_num_threads(spec["threads"])
    if spec["keep_freed"]:
        keep_freed_memory()
    device = torch.device(spec["device"])
    lm = load_model(device=device)
    x = lm.preprocess.batch([sample_image("chelsea")]).to(device)
    if spec["estimate"]:
        from sacam._layers import probe

        def estimate(
            model: torch.nn.Module, sample: torch.Tensor, limit: int = 8
        ) -> memory.MemoryCost:
            per = memory.bytes_per_sample(probe(model, sample[None]), tuple(sample.shape))
            return memory.MemoryCost(0.0, float(per), "estimate")

        memory.measure_memory = estimate  # type: ignore[assignment]
    chosen: list[int] = []
    real = sacam.methods._perturb.perturbed_scores_of
    signature = inspect.signature(real)

    def spy(*args: Any, **kwargs: Any) -> Any:
        tuner = signature.bind(*args, **kwargs).arguments["tuner"]
        chosen.append(max(p.inputs_per_pass for p in tuner.candidates))  # the memory cap
        return real(*args, **kwargs)

    sacam.methods._perturb.perturbed_scores_of = spy  # type: ignore[assignment]
    method = spec.get("method", "score-cam")
    if method == "score-cam":
        options: dict[str, Any] = {"top_channels": spec["channels"]}
    else:
        options = {"strategy": "expand"}
        real_tail = sacam.methods._perturb.PerturbationCAM.tail_batches

        def tail_spy(self: Any, *args: Any) -> tuple[int, int]:
            rows = real_tail(self, *args)
            chosen.append(rows[0])
            return rows

        sacam.methods._perturb.PerturbationCAM.tail_batches = tail_spy  # type: ignore[method-assign,assignment]
    cam = sacam.build_method(lm.model, method, max_memory_mb=spec["budget"], **options)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        cam(x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        # sacam's own measurement resets VmHWM: keep the peak reached before each reset
        peaks: list[float] = []
        reset = memory._reset_rss_peak

        def keep_peak() -> bool:
            peaks.append(status_mb("VmHWM"))
            return reset()

        memory._reset_rss_peak = keep_peak  # type: ignore[assignment]
        release_free_memory()  # glibc: free blocks back, a baseline of live memory
        base = status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        cam(x)
        peak = max([status_mb("VmHWM"), *peaks])
    costs = memory._COSTS.get(lm.model, {})
    cost = next(iter(costs.values()), None)
    return {
        "budget": spec["budget"],
        "peak_mb": peak - base,
        "batch": chosen[0] if chosen else None,
        "fixed_mb": None if cost is None else cost.fixed / 2**20,
        "per_sample_mb": None if cost is None else cost.per_sample / 2**20,
    }


def main() -> None:
    """Run each budget in a fresh process and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[256.0, 512.0, 1024.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels", type=int, default=256, help="top_channels (forward passes)")
    ap.add_argument("--estimate", action="store_true", help="shape estimate, not measured")
    ap.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="the child calls sacam.keep_freed_memory() first, as the CLI does",
    )
    ap.add_argument(
        "--method",
        default="score-cam",
        choices=["score-cam", "ablation-cam", "fd-cam", "recipro-cam"],
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, device {args.device}, "
        f"{'shape estimate' if args.estimate else 'measured cost'}, {args.method}"
        f"{', freed memory kept' if args.keep_freed_memory else ''}"
    )
    print("| budget MB | peak above start MB | peak / budget | batch | fixed MB | per sample MB |")
    print("|---|---|---|---|---|---|")
    for budget in args.budgets:
        spec = {
            "budget": budget,
            "threads": args.threads,
            "device": args.device,
            "channels": args.channels,
            "estimate": args.estimate,
            "keep_freed": args.keep_freed_memory,
            "method": args.method,
        }
        out = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        fixed = "-" if r["fixed_mb"] is None else f"{r['fixed_mb']:.0f}"
        per = "-" if r["per_sample_mb"] is None else f"{r['per_sample_mb']:.1f}"
        print(
            f"| {budget:.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] / budget:.2f} | {r['batch']} "
            f"| {fixed} | {per} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
