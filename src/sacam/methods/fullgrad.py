"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): input-gradient and bias-gradient saliency."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._locks import this_thread_only
from ..core import BaseCAM
from ..errors import MethodError
from ..explanation import CallContext
from ..registry import register_method
from ..targets import TargetsLike, evaluate_scores, resolve_targets

__all__ = ["FullGrad", "bias_layers", "effective_bias", "resize_align_corners"]

Variant = Literal["paper", "pytorch-grad-cam"]


def effective_bias(module: nn.Module) -> torch.Tensor | None:
    r"""The per-channel bias a layer adds to its output, or ``None`` if it has none.

    A convolution's ``bias``; for batch norm with running statistics,
    ``β - μ γ / \sqrt{σ² + ε}`` (the constant of the affine map it applies in eval mode,
    as FullGrad's authors take it; ``γ = 1``, ``β = 0`` without affine parameters). A
    batch norm without running statistics normalises by the batch, so only ``β`` is a
    constant (``None`` without it).

    Example:
        >>> bn = nn.BatchNorm2d(1).eval()
        >>> with torch.no_grad():
        ...     _ = bn.running_mean.fill_(2.0), bn.running_var.fill_(4.0 - bn.eps)
        ...     _ = bn.weight.fill_(3.0), bn.bias.fill_(0.5)
        >>> effective_bias(bn).tolist()  # 0.5 - 2 · 3 / 2
        [-2.5]
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        beta = module.bias.detach() if module.bias is not None else None
        if module.running_mean is None or module.running_var is None:
            return beta
        gamma = module.weight.detach() if module.weight is not None else 1.0
        shift = module.running_mean * gamma / torch.sqrt(module.running_var + module.eps)
        return (beta if beta is not None else 0.0) - shift
    bias = getattr(module, "bias", None)
    return bias.detach() if isinstance(bias, torch.Tensor) else None


def bias_layers(model: nn.Module, variant: Variant = "paper") -> list[nn.Module]:
    """The layers whose bias-gradients FullGrad sums, in ``model.modules()`` order.

    ``"paper"``: every ``nn.Conv2d`` with a bias and every ``nn.BatchNorm2d`` (subclasses
    included, as in the authors' code). ``"pytorch-grad-cam"``: modules whose type is
    exactly ``nn.Conv2d`` or ``nn.BatchNorm2d`` and whose ``bias`` is not ``None``
    (pytorch-grad-cam 1.5.7 compares types, so subclasses such as EfficientNet's
    ``Conv2dStaticSamePadding`` are left out).
    """
    if variant == "pytorch-grad-cam":
        return [
            m
            for m in model.modules()
            if type(m) in (nn.Conv2d, nn.BatchNorm2d) and getattr(m, "bias", None) is not None
        ]
    found: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            found.append(m)
        elif isinstance(m, nn.BatchNorm2d):
            found.append(m)
    return found


@register_method(
    "fullgrad",
    paper="Srinivas & Fleuret, NeurIPS 2019",
    url="https://arxiv.org/abs/1905.00780",
    description="Input-gradient × input plus the bias-gradients of every conv and batch-norm "
    "layer, each in absolute value, upsampled and summed (full-gradient saliency).",
    family="gradient",
)
class FullGrad(BaseCAM):
    r"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, https://arxiv.org/abs/1905.00780).

    The full-gradient decomposition ``y = ∇_x y · x + Σ_l Σ_c b^l_c Σ_{ij} ∂y/∂z^l_{c,ij}``
    (``z^l`` a layer's output, ``b^l`` its bias) gives the saliency map

    .. math:: S = ψ\big(∇_x y ⊙ x\big) + \sum_l \sum_c ψ\big(b^l_c\, ∂y/∂z^l_c\big)

    with ``ψ`` = absolute value, min-max normalisation, bilinear upsampling to the input,
    then a sum over channels. Layers (:func:`bias_layers`): every convolution with a bias
    and every batch norm (its :func:`effective_bias`), each call of a layer run several
    times counting once; only 4-D outputs count. One forward and one backward pass to the
    input (hooks on those layers, removed in a ``finally``); ``layer`` is ignored, as in
    pytorch-grad-cam (FullGrad uses every bias layer). The map has the input's
    resolution, with ``upsample=False`` too.

    Default ``variant="paper"`` follows the authors' code (idiap/fullgrad-saliency): ψ
    normalises each term over all its channels and positions, per image, as
    ``(t - min) / (max - min + 10⁻⁶)``, and upsamples with ``align_corners=True``.
    ``variant="pytorch-grad-cam"`` reproduces pytorch-grad-cam 1.5.7's ``FullGrad``: ψ
    normalises every channel of every term on its own, ``(t - min) / (max - min + 10⁻⁷)``,
    upsamples like OpenCV (``align_corners=False``), and takes only layers of exact type
    ``nn.Conv2d`` / ``nn.BatchNorm2d`` with a bias. torchcam 0.5.0 has none.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="fullgrad").shape
        torch.Size([2, 16, 16])
    """

    def __init__(self, *args: Any, variant: Variant = "paper", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if variant not in ("paper", "pytorch-grad-cam"):
            raise MethodError(
                f"fullgrad variant must be 'paper' or 'pytorch-grad-cam', got {variant!r}"
            )
        if self.reshape_transform is not None or self.eigen_smooth:
            raise MethodError(
                "fullgrad sums gradients of the input and of every bias layer: "
                "reshape_transform and eigen_smooth do not apply to it"
            )
        self.variant: Variant = variant

    def raw_maps(
        self, images: torch.Tensor, targets: TargetsLike, keep: bool = False
    ) -> tuple[CallContext, dict[str, torch.Tensor]]:
        """The saliency at the input's resolution, one map labelled ``"fullgrad"``."""
        layers = bias_layers(self.model, self.variant)
        stored: list[tuple[nn.Module, torch.Tensor]] = []

        def keep_output(module: nn.Module, _inp: object, out: object) -> object:
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.requires_grad:
                stored.append((module, out))
                return out.clone()  # later in-place ops act on the copy
            return None

        hook = this_thread_only(keep_output)
        handles = []
        try:
            for m in layers:
                handles.append(m.register_forward_hook(hook))
            x = images.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                output = self.logits_model(x)
                score_fn, class_idx = resolve_targets(targets, output.detach())
                scores = evaluate_scores(score_fn, output)
                grads = torch.autograd.grad(
                    scores.sum(), [x] + [t for _, t in stored], allow_unused=True
                )
        finally:
            for h in handles:
                h.remove()
        raw = self._saliency(x.detach(), grads, [m for m, _ in stored])
        ctx = CallContext.detached(self.logits_model, images, output, score_fn, class_idx, scores)
        return ctx, {"fullgrad": raw}

    def _saliency(
        self,
        x: torch.Tensor,
        grads: tuple[torch.Tensor | None, ...],
        modules: list[nn.Module],
    ) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        input_grad = grads[0]
        if input_grad is None:  # pragma: no cover - the input always reaches the output
            input_grad = torch.zeros_like(x)
        total = self._psi(input_grad * x, size)
        for module, g in zip(modules, grads[1:], strict=True):
            bias = effective_bias(module)
            if g is None or bias is None:
                continue
            total = total + self._psi(g * bias.to(g.dtype)[None, :, None, None], size)
        return total

    def _psi(self, term: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """``|·|``, min-max (per image, or per channel), sum over channels, upsample.

        The channel sum comes before the (linear) upsampling: the same map, one channel
        to resize instead of ``C``.
        """
        t = term.abs()
        dims = (2, 3) if self.variant == "pytorch-grad-cam" else (1, 2, 3)
        eps = 1e-7 if self.variant == "pytorch-grad-cam" else 1e-6
        t = t - t.amin(dim=dims, keepdim=True)
        t = (t / (t.amax(dim=dims, keepdim=True) + eps)).sum(dim=1)
        if tuple(t.shape[-2:]) == size:
            return t
        if self.variant == "paper":
            return resize_align_corners(t, size)
        return F.interpolate(t[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _axis_weights(n_in: int, n_out: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if n_out == 1 or n_in == 1:
        pos = torch.zeros(n_out, dtype=like.dtype, device=like.device)
    else:
        pos = torch.arange(n_out, dtype=like.dtype, device=like.device) * (n_in - 1) / (n_out - 1)
    lo = pos.floor().long().clamp(0, n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    return lo, hi, pos - lo.to(like.dtype)


def resize_align_corners(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear resize of ``(B, h, w)`` maps with corners aligned, as ``a + λ (b - a)``.

    The same values as ``F.interpolate(..., align_corners=True)`` up to rounding, written
    so that a constant map stays exactly constant (PyTorch's kernel moves it by a few ulp,
    which a min-max normalisation would blow up to a full-range pattern).

    Example:
        >>> resize_align_corners(torch.tensor([[[0.0, 1.0]]]), (1, 3)).tolist()
        [[[0.0, 0.5, 1.0]]]
    """
    h, w = maps.shape[-2:]
    r0, r1, ry = _axis_weights(h, size[0], maps)
    c0, c1, cx = _axis_weights(w, size[1], maps)
    top, bottom = maps[:, r0], maps[:, r1]
    rows = top + ry[None, :, None] * (bottom - top)  # (B, H, w)
    left, right = rows[:, :, c0], rows[:, :, c1]
    return left + cx[None, None, :] * (right - left)
