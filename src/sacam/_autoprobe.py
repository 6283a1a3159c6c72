"""The probe's forward passes: what runs, with which output, and which outputs fit the choice.

:func:`record_forward` runs the model once with a forward hook on every submodule and
records each call's output shape and a small sample of its values. :func:`unfit_calls`
(needed by the automatic layer choice only) runs it once more on a fixed noise image of
the same shape and lists the calls the
automatic layer choice must skip: an output without the input's batch size (windows of a
Swin block, region proposals), one that does not change with the image (a relative
position bias table), one that *is* the model's output up to resizing (a segmentation
model's class-score map) and, for token and channel-last outputs, one whose grid does not
reach the output (the patch tokens after a ViT's last attention, when only the class
token is classified). Both passes run in eval mode without changing the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._locks import this_thread_only
from ._outputs import to_logits
from .errors import SacamError
from .tokens import Layout, Resolved

__all__ = ["NoiseSpec", "SeenForward", "record_forward", "unfit_calls"]

SAMPLES = 256  # values sampled from each output (fixed random places) to tell a change


@dataclass
class SeenForward:
    """One forward pass as the hooks saw it (see :func:`record_forward`)."""

    order: tuple[tuple[str, int, tuple[int, ...] | None], ...]
    calls: dict[str, int]
    samples: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    kept: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    output: torch.Tensor | None = None
    output_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NoiseSpec:
    """The input of the probe's second pass: a fixed noise image like the probed batch."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    low: torch.Tensor  # 0-d, on the device: read only when the noise is made
    high: torch.Tensor

    @classmethod
    def like(cls, images: torch.Tensor) -> NoiseSpec:
        """Shape, dtype, device and value range of ``images`` (nothing read back yet)."""
        x = images.detach()
        return cls(tuple(images.shape), images.dtype, images.device, x.amin(), x.amax())

    def image(self) -> torch.Tensor:
        """The noise batch (its own generator: the user's random state is untouched)."""
        lo, hi = float(self.low), float(self.high)
        lo, hi = (lo, hi) if hi > lo else (lo - 1.0, lo + 1.0)
        gen = torch.Generator().manual_seed(0)
        noise = torch.rand(self.shape, generator=gen, dtype=torch.float32)
        noise = noise * (hi - lo) + lo
        return noise.to(device=self.device, dtype=self.dtype)


def _sample(out: torch.Tensor) -> torch.Tensor:
    """Values of ``out`` at fixed pseudo-random places, all within it.

    Evenly spaced places could all fall on the same border pixel of every channel (a
    padding's zeros), which would read as an output that does not change.
    """
    flat = out.detach().reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(SAMPLES, device=out.device)
    gen = torch.Generator().manual_seed(flat.numel())
    idx = torch.randint(flat.numel(), (SAMPLES,), generator=gen).to(out.device)
    return flat[idx].float()


def record_forward(
    model: nn.Module,
    images: torch.Tensor,
    keep: set[tuple[str, int]] | None = None,
    grad: bool = False,
) -> SeenForward:
    """One forward of ``images`` that records every call (the model must be in eval mode).

    ``keep``: the ``(name, call)`` outputs to keep whole; ``grad``: run with autograd on
    (the kept outputs then carry their graph), else under ``torch.inference_mode()``.
    """
    names = {m: n for n, m in model.named_modules() if n}
    order: list[tuple[str, int, tuple[int, ...] | None]] = []
    calls: dict[str, int] = {}
    seen = SeenForward((), calls)

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        name = names[module]
        k = calls.get(name, 0)
        calls[name] = k + 1
        is_tensor = isinstance(out, torch.Tensor)
        order.append((name, k, tuple(out.shape) if isinstance(out, torch.Tensor) else None))
        if is_tensor:
            assert isinstance(out, torch.Tensor)
            seen.samples[(name, k)] = _sample(out)
            if keep is not None and (name, k) in keep:
                seen.kept[(name, k)] = out

    handles = [m.register_forward_hook(this_thread_only(hook)) for m in names]
    try:
        if grad:
            with torch.inference_mode(False), torch.enable_grad():
                output = model(images.clone().requires_grad_(True))
        else:
            with torch.inference_mode():
                output = model(images)
    finally:
        for h in handles:
            h.remove()
    seen.order = tuple(order)
    try:
        seen.output = to_logits(output)
        seen.output_shape = tuple(seen.output.shape)
    except SacamError:
        seen.output = None
    return seen


def unfit_calls(
    model: nn.Module, noise: NoiseSpec, first: SeenForward, layouts: tuple[Resolved, ...]
) -> dict[int, str]:
    """Calls of ``first.order`` the automatic layer choice skips, with the reason (module doc).

    Runs the second pass (on ``noise.image()``); the model must be in eval mode.
    """
    batch = noise.shape[0]
    unfit: dict[int, str] = {}
    for i, (_, _, shape) in enumerate(first.order):
        if shape is not None and (len(shape) == 0 or shape[0] != batch):
            unfit[i] = f"its batch size is not the input's ({batch})"
    out_shape = first.output_shape
    keep = {
        (n, c)
        for i, (n, c, s) in enumerate(first.order)
        if i not in unfit and s is not None and _kept_kind(s, out_shape, layouts, i)
    }
    grad = any(_is_moved(layouts, i) for i, (n, c, _) in enumerate(first.order) if (n, c) in keep)
    try:
        second = record_forward(model, noise.image(), keep, grad)
    except (RuntimeError, ValueError, SacamError):
        return unfit  # the model does not take the noise image: skip these checks
    for i, (n, c, s) in enumerate(first.order):
        if i in unfit or s is None:
            continue
        a, b = first.samples.get((n, c)), second.samples.get((n, c))
        if a is not None and b is not None and a.shape == b.shape and torch.equal(a, b):
            unfit[i] = "it does not change with the image"
        elif (n, c) in second.kept and _is_output(second.kept[(n, c)], second.output):
            unfit[i] = "it is the model's output"
    if grad:
        unfit.update(_grid_unused(first, second, layouts))
    return unfit


def _is_moved(layouts: tuple[Resolved, ...], i: int) -> bool:
    """Whether call ``i`` has a token or channel-last layout (its grid is checked by gradient)."""
    lay = layouts[i] if i < len(layouts) else None
    return isinstance(lay, Layout) and lay.kind != "channels_first"


def _kept_kind(
    shape: tuple[int, ...],
    out_shape: tuple[int, ...] | None,
    layouts: tuple[Resolved, ...],
    i: int,
) -> bool:
    if _is_moved(layouts, i):
        return True
    return (
        out_shape is not None
        and len(out_shape) == 4
        and len(shape) == 4
        and shape[:2] == out_shape[:2]
    )


def _is_output(t: torch.Tensor, output: torch.Tensor | None) -> bool:
    """Whether ``t`` is the model's 4-D output, up to a bilinear resize."""
    if output is None or output.ndim != 4 or t.ndim != 4 or t.shape[:2] != output.shape[:2]:
        return False
    with torch.no_grad():
        t, ref = t.detach().float(), output.detach().float()
        if t.shape != ref.shape:
            t = F.interpolate(t, size=ref.shape[2:], mode="bilinear", align_corners=False)
        scale = float(ref.abs().max()) or 1.0
        return bool(torch.allclose(t, ref, rtol=1e-4, atol=1e-5 * scale))


def _grid_unused(
    first: SeenForward, second: SeenForward, layouts: tuple[Resolved, ...]
) -> dict[int, str]:
    """Token and channel-last outputs whose grid positions do not reach the model's output."""
    index = {(n, c): i for i, (n, c, _) in enumerate(first.order)}
    keys = [k for k in second.kept if _is_moved(layouts, index.get(k, -1))]
    kept = [second.kept[k] for k in keys]
    if second.output is None or not kept or not second.output.requires_grad:
        return {}
    gen = torch.Generator().manual_seed(1)
    w = torch.rand(second.output.shape, generator=gen).to(second.output.device)
    try:
        grads = torch.autograd.grad((second.output.float() * w).sum(), kept, allow_unused=True)
    except RuntimeError:
        return {}  # e.g. an in-place operation after the layer: no verdict
    unused: dict[int, str] = {}
    for key, g in zip(keys, grads, strict=True):
        lay = layouts[index[key]]
        assert isinstance(lay, Layout)
        if g is None or not bool(lay.to_maps(g).abs().sum() > 0):
            unused[index[key]] = "its grid positions do not reach the model's output"
    return unused
