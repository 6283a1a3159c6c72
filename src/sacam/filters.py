"""Image filters shared by methods and metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SacamError


def gaussian_blur(images: torch.Tensor, kernel_size: int = 51, sigma: float = 50.0) -> torch.Tensor:
    """Gaussian blur of ``(B, C, H, W)`` images, separable, with reflected borders.

    The kernel is ``exp(-d² / 2σ²)`` over ``d = -r..r`` (``r = kernel_size // 2``),
    normalised to sum 1, as kornia's ``gaussian_blur2d`` (reflect border) that the
    Group-CAM authors use with ``kernel_size=51, sigma=50``. Reflection needs ``r`` below
    the image size, so on images smaller than the kernel, ``r`` is cut to
    ``min(H, W) - 1`` (then the blur is close to a box average of the whole image).

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
        >>> y = gaussian_blur(x, kernel_size=3, sigma=1.0)
        >>> round(float(y.sum()), 5), bool(y[0, 0, 2, 2] < 1)
        (1.0, True)
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise SacamError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if not sigma > 0:
        raise SacamError(f"sigma must be > 0, got {sigma!r}")
    b, c, h, w = images.shape
    r = min(kernel_size // 2, h - 1, w - 1)
    if r == 0:
        return images.clone()
    d = torch.arange(-r, r + 1, dtype=torch.float64, device=images.device)
    kernel = torch.exp(-(d * d) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    x = images.reshape(b * c, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.view(b, c, h, w)
