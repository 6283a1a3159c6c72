"""LIFT-CAM (Jung & Oh, ICCV 2021): channel weights from DeepLIFT contributions of the layer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .._hooks import Capture
from .._passes import stored_outputs
from ..core import BaseCAM
from ..errors import LayerError, MethodError
from ..explanation import CallContext, LayerData
from ..registry import register_method
from ..targets import evaluate_scores
from ._options import check_number

__all__ = ["ELEMENTWISE", "LiftCAM", "rescale_hooks"]

# element-wise activations whose gradient DeepLIFT's rescale rule replaces (ReLU6 is a Hardtanh)
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid,
)  # fmt: skip


@contextmanager
def rescale_hooks(
    model: nn.Module,
    reference: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] | None,
    eps: float,
) -> Iterator[dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]]:
    r"""Hooks on the model's element-wise activations, removed on exit.

    With ``reference=None`` they record each call's ``(input, output)`` (detached copies),
    in call order per module. With the records of a reference pass, each call's output
    becomes a tensor of the same value whose gradient is DeepLIFT's rescale multiplier
    ``Δy / Δx = (f(x) − f(x_0)) / (x − x_0)`` where ``|x − x_0| ≥ eps`` and ``f'(x)``
    elsewhere (as captum). An in-place module runs on a copy, so its input stays readable.
    """
    record: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    seen: dict[nn.Module, list[torch.Tensor]] = {}
    owner = threading.get_ident()  # other threads' forward passes are left alone

    def pre(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if threading.get_ident() != owner:
            return None
        x = args[0]
        seen.setdefault(module, []).append(x)
        return (x.clone(), *args[1:]) if getattr(module, "inplace", False) else None

    def post(module: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != owner:
            return None
        x = seen[module].pop()
        if reference is None:
            record.setdefault(module, []).append((x.detach().clone(), out.detach().clone()))
            return None
        calls = record.setdefault(module, [])
        if len(calls) >= len(reference.get(module, [])):
            raise MethodError(
                "lift-cam: the network ran other activations with the layer's zero reference "
                "than with its actual output, so DeepLIFT's reference pass does not apply"
            )
        x0, y0 = reference[module][len(calls)]
        calls.append((x0, y0))
        dx = x.detach() - x0
        big = dx.abs() >= eps
        slope = (out.detach() - y0) / torch.where(big, dx, torch.ones_like(dx))
        return torch.where(big, out.detach() + slope * (x - x.detach()), out)

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, ELEMENTWISE):
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
        yield record
    finally:
        for h in handles:
            h.remove()


@register_method(
    "lift-cam",
    paper="Jung & Oh, ICCV 2021 (arXiv 2102.05228)",
    url="https://arxiv.org/abs/2102.05228",
    description="Channel weights are the DeepLIFT contributions (zero reference) of each "
    "channel's activations to the class score, through the network after the layer.",
    family="gradient",
)
class LiftCAM(BaseCAM):
    r"""LIFT-CAM (Jung & Oh, ICCV 2021, https://arxiv.org/abs/2102.05228).

    Each channel's weight approximates its SHAP value by DeepLIFT with the zero
    reference (``A' = 0``), through the network after the layer:

    .. math:: w^c_k = \sum_{ij} \big(A^k_{ij} - 0\big)\, m^{c}_{kij},\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    where ``m`` are DeepLIFT's multipliers of the target score ``y^c`` (the logit by
    default) with respect to the layer: back-propagated like gradients, except that each
    element-wise activation :data:`ELEMENTWISE` (ReLU, ReLU6, SiLU, GELU, sigmoid, ...)
    passes ``Δy / Δx`` between the actual and the reference pass (the rescale rule; the
    derivative where ``|Δx| < eps``, as captum). Linear and affine layers (convolutions,
    batch norm in eval mode, pooling by averages) are exact under it, so on such tails
    ``Σ_k w_k = y^c(A) − y^c(0)`` (summation to delta). Everything else, including
    max-pooling and products of activations, is treated as linear (its gradient), where
    captum has special rules for max-pooling and softmax only. The paper's code runs
    captum's ``DeepLift`` on the tail; sacam implements the rule itself: captum 0.9.0
    supports only ReLU, ELU, LeakyReLU, sigmoid, tanh and softplus, so the default
    model's ReLU6 would get plain gradients there.

    Cost: one forward pass with the layer's output replaced by zeros (the reference),
    one forward and one backward pass; the hooks (on the target layer and the
    activations) exist only during those passes.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="lift-cam", layer="0").shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = False  # its own passes below replace the engine's backward pass

    def __init__(self, *args: Any, eps: float = 1e-10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eps = check_number("eps", eps, minimum=0)
        if self.reshape_transform is not None:
            raise MethodError(
                "lift-cam replaces the layer's output with its zero reference, so it cannot "
                "use a reshape_transform: pick a layer with a (B, K, h, w) output"
            )

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``Σ_ij A ⊙ m``, the DeepLIFT contribution of each channel, ``(B, K)``.

        Also kept in ``Explanation.extras["lift-cam"][layer]`` for inspection.
        """
        w = (layer.activations * self.multipliers(layer, ctx)).sum(dim=(2, 3))
        ctx.extras.setdefault("lift-cam", {})[layer.ref.label] = w
        return w

    def multipliers(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """DeepLIFT's multipliers ``m`` of the target scores at the layer, ``(B, K, h, w)``."""
        zeros = torch.zeros_like(layer.activations)

        def to_zero(label: str, out: torch.Tensor) -> torch.Tensor:
            if out.shape != zeros.shape:
                raise LayerError(
                    f"lift-cam expected layer {label!r} to output {tuple(zeros.shape)}"
                )
            return zeros.to(out.dtype)

        model = ctx.model
        with torch.no_grad(), rescale_hooks(model, None, self.eps) as reference:
            with Capture([layer.ref], with_grad=False, edit=to_zero):
                model(ctx.images)
        with torch.enable_grad(), rescale_hooks(model, reference, self.eps):
            with Capture([layer.ref], with_grad=True) as cap:
                scores = evaluate_scores(ctx.score_fn, model(ctx.images))
                (stored,) = stored_outputs(cap, [layer.ref])
                if not scores.requires_grad:
                    raise LayerError(
                        f"the target score does not depend on layer {layer.ref.label!r}: pick "
                        "a layer on the path to the output"
                    )
                (mult,) = torch.autograd.grad(scores.sum(), stored)
        return mult.detach()
