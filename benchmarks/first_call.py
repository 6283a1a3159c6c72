"""First and second call of the perturbation methods on a model sacam has not seen.

Each row runs in a fresh process with an empty plan cache (``SACAM_CACHE_DIR`` set to a new
folder), one torch thread and one seeded random input: the method is called twice on the
same model object, and both calls are timed (CPU time of the process, and wall time).
The first call pays what sacam learns about a new model (the memory measurement, the
tuning of the Score-CAM family, which then runs its loop once more with the settled
plan); the ratio says how many warm calls that is. The last column checks that both
calls gave the same bits.

    python benchmarks/first_call.py                       # both models, three methods
    python benchmarks/first_call.py --models resnet18 --methods recipro-cam --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

METHODS = ("recipro-cam", "ablation-cam", "score-cam")
MODELS = ("efficientnet-lite0", "resnet18")


def resnet18() -> torch.nn.Module:
    """A ResNet-18-shaped network (basic blocks 2-2-2-2, 64 to 512 channels), seeded."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(y + self.down(x))

    torch.manual_seed(0)
    widths, layers, cin = (64, 128, 256, 512), [], 64
    for i, w in enumerate(widths):
        layers.append(nn.Sequential(Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)))
        cin = w
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, 1000),
    ).eval()


def _row(model_name: str, method: str, size: int) -> dict[str, object]:
    """Run in the child: time two calls of ``method`` on a fresh ``model_name``."""
    import torch

    import sacam
    import sacam.models

    torch.set_num_threads(1)
    if model_name == "resnet18":
        model = resnet18()
    else:
        model = sacam.models.load_model().model
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times, maps = [], []
    for _ in range(2):
        cpu, wall = time.process_time(), time.perf_counter()
        maps.append(sacam.explain(model, x, method=method))
        times.append((time.process_time() - cpu, time.perf_counter() - wall))
    return {
        "model": model_name,
        "method": method,
        "first": times[0],
        "second": times[1],
        "same_bits": bool(torch.equal(maps[0], maps[1])),
    }


def main(argv: list[str] | None = None) -> int:
    """Run each (model, method) row in its own process and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--row", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        print(json.dumps(_row(args.row[0], args.row[1], args.size)))
        return 0
    print(
        f"First call on an unseen model: empty plan cache, 1 thread, one {args.size}×"
        f"{args.size} input, python {sys.version.split()[0]}\n"
    )
    print(
        "| model | method | 1st call: CPU s (wall s) | 2nd call: CPU s (wall s) "
        "| ratio (CPU) | same bits |"
    )
    print("|---|---|---|---|---|---|")
    failed = 0
    for model in args.models:
        for method in args.methods:
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "SACAM_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
                child = [sys.executable, __file__, "--size", str(args.size), "--row", model, method]
                done = subprocess.run(child, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {model} | {method} | failed: {done.stderr.strip()[-200:]} | | | |")
                failed += 1
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            (c1, w1), (c2, w2) = r["first"], r["second"]
            print(
                f"| {model} | {method} | {c1:.2f} ({w1:.2f}) | {c2:.2f} ({w2:.2f}) | "
                f"{c1 / max(c2, 1e-9):.1f} | {'yes' if r['same_bits'] else 'NO'} |"
            )
            failed += not r["same_bits"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
