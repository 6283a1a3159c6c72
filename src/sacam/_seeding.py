"""Seeded random numbers that are the same on every device.

CPU and CUDA generators produce different streams for the same seed, so a method that
drew its noise on the images' device would give different maps on CPU and on CUDA. sacam
draws every random number from a CPU ``torch.Generator`` in float32 and moves it to the
device and dtype it is needed in: the same seed gives the same numbers everywhere (up to
the rounding of the final dtype).
"""

from __future__ import annotations

import torch

__all__ = ["cpu_generator", "seeded_noise"]


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``.

    Example:
        >>> g = cpu_generator(3)
        >>> torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=cpu_generator(3)))
        True
    """
    return torch.Generator(device="cpu").manual_seed(seed)


def seeded_noise(
    shape: tuple[int, ...] | torch.Size,
    seed: int | torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn on the CPU, then moved to ``device``/``dtype``.

    Args:
        shape: the noise's shape.
        seed: an ``int`` (a fresh CPU generator seeded with it) or a CPU generator to draw
            the next numbers from (successive calls continue its stream).
        device: where the noise is needed.
        dtype: its dtype; the draw is float32 whatever the dtype, so a dtype changes only
            the rounding, never the stream.

    Returns:
        the noise, ``shape``, on ``device`` in ``dtype``.

    Example:
        >>> a = seeded_noise((2, 3), 7, "cpu", torch.float64)
        >>> torch.equal(a, torch.randn(2, 3, generator=cpu_generator(7)).double())
        True
    """
    gen = cpu_generator(seed) if isinstance(seed, int) else seed
    if gen.device.type != "cpu":
        raise ValueError(f"seeded_noise draws from a CPU generator, got one on {gen.device}")
    draw = torch.randn(tuple(shape), generator=gen, dtype=torch.float32, device="cpu")
    return draw.to(device=device, dtype=dtype)
