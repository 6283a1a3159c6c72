"""Tiny seeded models with hand-set weights, and the tolerances for comparing their maps."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn


class GapNet(nn.Module):
    """feat (identity on the input, K=2 channels) -> global average pool -> fc."""

    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(len(weight[0]), len(weight), bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.feat(x)).flatten(1))


class FlatNet(nn.Module):
    """feat (identity) -> flatten -> fc: the gradient varies with position."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(x).flatten(1))


def small_cnn(inplace: bool = False, seed: int = 0, classes: int = 5) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=inplace),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    )


def colour_net() -> nn.Sequential:
    """A hand-weighted classifier of the dominant colour: red, green, blue, dark, bright."""
    net = nn.Sequential(
        nn.Conv2d(3, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)
    )
    with torch.no_grad():
        eye = torch.eye(3)
        net[0].weight.copy_(torch.cat([eye, -eye])[:, :, None, None])
        net[0].bias.zero_()
        net[4].weight.copy_(
            torch.tensor(
                [
                    [3.0, -1, -1, 0, 0, 0],
                    [-1, 3.0, -1, 0, 0, 0],
                    [-1, -1, 3.0, 0, 0, 0],
                    [-1, -1, -1, 1, 1, 1],
                    [1, 1, 1, -1, -1, -1],
                ]
            )
        )
        net[4].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -3.0, -1.0]))
    return net


# Tolerances. Comparing two *different* computations of the same map (a batch against
# single calls, another batch size or memory format) in float32 measures the CPU's
# kernels, not sacam: oneDNN/MKL pick their blocking by batch size and instruction set
# (AVX2 on one machine, AVX-512 on another), so the rounding differs, and a min-max
# normalised map divides that rounding by its span, which can be small (a 1e-7 relative
# error in logits became 1.2e-4 in a Group-CAM map on an Intel Xeon). Such comparisons
# run in float64 instead: rounding is then ~1e-16 per operation, a few hundred operations
# deep at most, so F64_ATOL = 1e-9 leaves six orders of magnitude of margin while any
# logic error (a sample leaking into another's map) shows at 1e-3 or more. Comparisons of
# one computation with hand-computed numbers stay in float32 at 1e-6 (≈ 10 ulp of 1).
F64_ATOL = 1e-9


def in_double(model: nn.Module, images: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A float64 copy of the model and the images, for comparisons of two computations."""
    import copy

    return copy.deepcopy(model).double(), images.double()


class HeldColourNet(nn.Module):
    """colour_net that stops for good, mid-run, while a gate file exists.

    After ``after`` gradient passes (one per image for Grad-CAM at batch size 1) every
    further forward pass waits, polling, until ``gate`` is removed, and ``gate.held``
    says it is waiting. A run on it cannot finish before the test has interrupted it: the
    test waits on files, not on the clock.
    """

    def __init__(self, gate: Path, after: int) -> None:
        super().__init__()
        self.net = colour_net()
        self.gate = gate
        self.after = after
        self.passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.passes += 1
        if self.passes > self.after and self.gate.exists():
            self.gate.with_suffix(".held").touch()  # tells the test this process is stopped
            while self.gate.exists():
                time.sleep(0.02)
        return self.net(x)


def held_model_spec(folder: Path, after: int) -> tuple[str, Path]:
    """A ``module:factory`` spec for :class:`HeldColourNet` and its gate file, in ``folder``.

    The factory lives in a module written into ``folder`` (put it on ``PYTHONPATH``), so
    the gate reaches child processes and Ray workers, which get no test state otherwise.
    """
    gate = folder / "gate"
    gate.touch()
    name = f"held_{abs(hash(str(folder))) % 10**8}"
    (folder / f"{name}.py").write_text(
        "from pathlib import Path\n\n"
        "from tests.support.nets import HeldColourNet\n\n\n"
        f"def net():\n    return HeldColourNet(Path({str(gate)!r}), {after})\n"
    )
    return f"{name}:net", gate
