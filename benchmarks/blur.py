"""The Gaussian blur of the insertion metric and Group-CAM, against a convolution floor.

Usage:

    python benchmarks/blur.py                 # 256 images of 224 px, kernels 11 and 51
    python benchmarks/blur.py --device cuda --batch 512

``sacam.filters.gaussian_blur`` runs each 1-D pass as one matrix product (the kernel and
the reflected border folded into a side × side matrix). This prints its seconds per batch
beside two convolutions of the padded image measured in the same process: one channel at
a time (what it did before) and depthwise (``groups=C``, the fallback for sides above
``MATRIX_MAX_SIDE``), their ratios and the largest difference from the one-channel
convolution. A GPU call is synchronised before each clock reading.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
from speed import timeit

from sacam.filters import gaussian_blur


def taps(r: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """The normalised Gaussian taps ``-r..r`` on ``like``'s device and dtype."""
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(d * d) / (2 * sigma * sigma))
    return (k / k.sum()).to(like.device, like.dtype)


def depthwise(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """The blur as a depthwise (``groups=C``) convolution of the reflect-padded image."""
    c, h, w = images.shape[1:]
    r = min(kernel_size // 2, h - 1, w - 1)
    k = taps(r, sigma, images)
    x = F.conv2d(
        F.pad(images, (r, r, 0, 0), mode="reflect"),
        k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
        groups=c,
    )
    return F.conv2d(
        F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
    )


def one_channel(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """The blur as a one-channel convolution of the reflect-padded image (the old code)."""
    b, c, h, w = images.shape
    r = min(kernel_size // 2, h - 1, w - 1)
    k = taps(r, sigma, images)
    x = images.reshape(b * c, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x.view(b, c, h, w)


def main() -> None:
    """Print the Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)

    def timed(fn: Callable[..., torch.Tensor], k: int, s: float) -> float:
        """Median seconds of ``fn(x, k, s)``."""

        def call() -> None:
            fn(x, k, s)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return timeit(call, args.repeat)

    print(
        f"machine: {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )
    print(f"{args.batch} images of 3 × {args.size} × {args.size}, median of {args.repeat}\n")
    print(
        "| kernel, σ | matrix (s) | one-channel conv (s) | depthwise conv (s) "
        "| one-channel / matrix | max abs diff |"
    )
    print("|---|---|---|---|---|---|")
    for k, s in ((11, 5.0), (51, 50.0)):
        matrix, old, grouped = (timed(f, k, s) for f in (gaussian_blur, one_channel, depthwise))
        diff = float((gaussian_blur(x, k, s) - one_channel(x, k, s)).abs().max())
        print(
            f"| {k}, {s:g} | {matrix:.3f} | {old:.3f} | {grouped:.3f} "
            f"| {old / matrix:.1f}× | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
