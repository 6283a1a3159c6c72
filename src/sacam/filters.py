"""Image filters shared by methods and metrics."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .errors import SacamError

MATRIX_MAX_SIDE = 2048  # a float64 matrix of this side is 32 MB: larger ones are not cached


def gaussian_blur(images: torch.Tensor, kernel_size: int = 51, sigma: float = 50.0) -> torch.Tensor:
    """Gaussian blur of ``(B, C, H, W)`` images, separable, with reflected borders.

    The kernel is ``exp(-d² / 2σ²)`` over ``d = -r..r`` (``r = kernel_size // 2``),
    normalised to sum 1, as kornia's ``gaussian_blur2d`` (reflect border) that the
    Group-CAM authors use with ``kernel_size=51, sigma=50``. Reflection needs ``r`` below
    the image size, so on images smaller than the kernel, ``r`` is cut to
    ``min(H, W) - 1`` (then the blur is close to a box average of the whole image).

    Each 1-D pass is one matrix product with the kernel and the reflection folded into a
    ``W × W`` (``H × H``) matrix: on a CPU about 11× faster than a one-channel
    convolution of the padded image (``benchmarks/blur.py``), with the same sums in
    another order (differences of a few 1e-7). The matrices are kept per side, device
    and dtype (built once, outside inference mode, so any later call may differentiate
    through them). Sides above :data:`MATRIX_MAX_SIDE` use the padded depthwise
    convolution.

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
    if max(h, w) > MATRIX_MAX_SIDE:
        return _blur_by_convolution(images, r, sigma)
    rows = _blur_matrix(w, r, float(sigma), images.device, images.dtype)
    cols = _blur_matrix(h, r, float(sigma), images.device, images.dtype)
    x = images.reshape(b * c * h, w) @ rows  # along W
    x = torch.matmul(cols.t(), x.view(b * c, h, w))  # along H
    return x.view(b, c, h, w)


def _kernel(r: int, sigma: float) -> torch.Tensor:
    """The normalised Gaussian taps ``d = -r..r``, float64 on the CPU."""
    d = torch.arange(-r, r + 1, dtype=torch.float64, device="cpu")
    kernel = torch.exp(-(d * d) / (2 * sigma * sigma))
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=8)
def _cpu_matrix(n: int, r: int, sigma: float) -> torch.Tensor:
    """``M`` with ``(x @ M)[i] = Σ_t k[t] · x[reflect(i + t)]``: one 1-D pass as a product."""
    with torch.inference_mode(False), torch.no_grad():
        out = torch.arange(n, device="cpu").expand(2 * r + 1, n)
        src = out + torch.arange(-r, r + 1, device="cpu")[:, None]
        src = torch.where(src < 0, -src, src)  # r <= n - 1: one reflection is enough
        src = torch.where(src >= n, 2 * (n - 1) - src, src)
        weights = _kernel(r, sigma)[:, None].expand(2 * r + 1, n)
        matrix = torch.zeros(n, n, dtype=torch.float64, device="cpu")
        matrix.index_put_((src.reshape(-1), out.reshape(-1)), weights.reshape(-1), accumulate=True)
    return matrix


@functools.lru_cache(maxsize=8)
def _blur_matrix(
    n: int, r: int, sigma: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """:func:`_cpu_matrix` on ``device`` in ``dtype``, copied once (no transfer per call)."""
    with torch.inference_mode(False), torch.no_grad():
        return _cpu_matrix(n, r, sigma).to(device=device, dtype=dtype, copy=True)


def _blur_by_convolution(images: torch.Tensor, r: int, sigma: float) -> torch.Tensor:
    c = images.shape[1]
    kernel = _kernel(r, sigma).to(images.device, images.dtype)
    x = F.pad(images, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
