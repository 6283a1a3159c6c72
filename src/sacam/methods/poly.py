"""Poly-CAM (Englebert et al., MVA 2024): Score-type stage maps fused from deep to shallow."""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._layers import LayerRef, ProbeRecord
from ..errors import LayerError
from ..explanation import CallContext, LayerData
from ..registry import register_method
from ._options import check_bool, check_count, check_number, check_variant
from ._perturb import PerturbationCAM, strongest_channels, target_scores

__all__ = ["PolyCAM", "local_normalisation", "stage_layers"]

VARIANTS = ("plus", "minus", "plus-minus")


def stage_layers(
    model: nn.Module, record: ProbeRecord, input_size: tuple[int, ...]
) -> list[LayerRef]:
    """The last layer at each resolution the network steps down to, in forward order.

    Walking the probe's 4-D outputs in the order their calls finish, an output smaller
    (in area) than every one before starts a new stage, and the stage's layer is the last
    output of exactly that size before the next stage. Outputs larger than the current
    stage (padding layers) or than the input, and 1×1 outputs (pooling,
    squeeze-and-excitation gates) are passed over. On plain CNNs (VGG, ResNet) this is
    the authors' rule (the layer before each change of spatial size).
    """
    modules = dict(model.named_modules())
    area = input_size[0] * input_size[1]
    stages: list[tuple[tuple[int, ...], str, int]] = []
    for name, call, shape in record.order:
        if shape is None or len(shape) != 4 or shape[2] * shape[3] <= 1:
            continue
        size = shape[2:]
        if size[0] * size[1] < area if stages else size[0] * size[1] <= area:
            stages.append((size, name, call))
            area = size[0] * size[1]
        elif stages and size == stages[-1][0]:
            stages[-1] = (size, name, call)
    if not stages:
        raise LayerError(
            "poly-cam found no layer with a 4-D output of spatial size above 1: pass layer= "
            "a list of layers"
        )
    return [LayerRef(modules[n], n, c, record.calls[n]) for _, n, c in stages]


def local_normalisation(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Poly-CAM's LNorm: ``M / max(up(down(M, size)), 1e-12)`` for ``(B, h, w)`` maps."""
    down = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
    back = F.interpolate(down, size=maps.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return maps / back.clamp_min(1e-12)


@register_method(
    "poly-cam",
    paper="Englebert et al., MVA 2024 (arXiv 2204.13359)",
    url="https://arxiv.org/abs/2204.13359",
    description="Score-type maps of every stage of the network, multiplied from deep to "
    "shallow at increasing resolution: a map at the shallowest stage's resolution.",
    family="perturbation",
)
class PolyCAM(PerturbationCAM):
    r"""Poly-CAM (Englebert, Cornu & De Vleeschouwer, MVA 2024, https://arxiv.org/abs/2204.13359).

    At each stage ``l`` (default: the last layer at each resolution the network steps
    down to, :func:`stage_layers`, five on the default model; or ``layer=`` a list),
    each channel gives a mask ``M_k``: the channel normalised to [0, 1] between its 0.1
    and 99.9 percentiles (``outlier``, in percent) at the layer's resolution, then
    upsampled (bilinear) to the input. With ``p`` the softmax probability of the class
    (the target score for callable targets):

    - ``"plus"``: ``w_k = p(x ⊙ M_k)`` (PCAM+, insertion);
    - ``"minus"``: ``w_k = ReLU(p(x) − p(x ⊙ (1 − M_k)))`` (PCAM−, deletion);
    - ``"plus-minus"`` (default, the authors' usage example): ``w_k = ReLU(p(x ⊙ M_k) +
      p(x) − p(x ⊙ (1 − M_k)))`` (PCAM±).

    The stage map is ``S_l = ReLU(Σ_k w_k A_l^k)``; from the deepest stage ``D`` up,

    .. math:: P_D = S_D,\quad P_l = \mathrm{ReLU}\big(\mathrm{LNorm}(S_l) \odot
              \mathrm{up}(P_{l+1})\big),\quad
              \mathrm{LNorm}(S_l) = S_l \,/\, \max\big(\mathrm{up}(\mathrm{down}(S_l)),
              10^{-12}\big)

    (down to the deeper stage's size and back, bilinear: each position relative to its
    neighbourhood, :func:`local_normalisation`; ``lnorm=False`` skips it), and the map is
    ``P`` of the shallowest stage, at its resolution. ``Explanation.extras["poly-cam"]``
    holds every ``P_l`` (raw, deep to shallow). As the authors' code, except that masks
    are ``(A − q_lo)/(q_hi − q_lo)`` where their code divides by ``q_hi`` (the same on
    post-ReLU layers, where ``q_lo = 0``), and that the engine min-max normalises the
    final map (theirs uses the same percentile normalisation as the masks).

    Cost: ``K_l`` masked passes per stage (``2 K_l`` for ``"plus-minus"``), per image,
    ``inputs_per_pass`` at a time under ``torch.inference_mode()``. ``top_channels=n`` (off
    by default, not exact) scores only the ``n`` channels of each stage with the largest
    mean activation and gives the others weight 0, as Score-CAM's option.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        ...                     nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> ex = sacam.explain_full(net, torch.rand(1, 3, 16, 16), method="poly-cam")
        >>> ex.maps.shape, list(ex.extras["poly-cam"])
        (torch.Size([1, 16, 16]), ['4', '1'])
    """

    def __init__(
        self,
        *args: Any,
        variant: Literal["plus", "minus", "plus-minus"] = "plus-minus",
        lnorm: bool = True,
        outlier: float = 0.1,
        top_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.top_channels = (
            None if top_channels is None else check_count("top_channels", top_channels)
        )
        self.variant = check_variant("poly-cam", variant, VARIANTS)
        self.lnorm = check_bool("lnorm", lnorm)
        self.outlier = check_number("outlier", outlier, minimum=0, maximum=50)

    def rows_per_channel(self) -> int:
        """Two for ``"plus-minus"`` (a mask and its complement), else one."""
        return 2 if self.variant == "plus-minus" else 1

    def select_layers(self, record: ProbeRecord, images: torch.Tensor) -> list[LayerRef]:
        """The stages (:func:`stage_layers`, or ``layer``), in forward order."""
        if self.layer is None:
            refs = stage_layers(self.model, record, tuple(images.shape[-2:]))
        else:
            refs = super().select_layers(record, images)
        order = {(n, c): i for i, (n, c, _) in enumerate(record.order)}
        return sorted(refs, key=lambda r: order[(r.name, r.call)])

    def combine(self, layers: list[LayerData], ctx: CallContext) -> dict[str, torch.Tensor]:
        """``P`` of the shallowest stage; every ``P_l`` in ``ctx.extras["poly-cam"]``."""
        fused = self.fuse_stages(layers, ctx)
        ctx.extras["poly-cam"] = fused
        first = layers[0].ref.label
        return {first: fused[first]}

    def fuse_stages(self, layers: list[LayerData], ctx: CallContext) -> dict[str, torch.Tensor]:
        """``P_l`` of every stage, deep to shallow, ``{label: (B, h_l, w_l)}``."""
        out: dict[str, torch.Tensor] = {}
        prev: torch.Tensor | None = None
        for layer in reversed(layers):
            stage = self.layer_map(layer, ctx).clamp_min(0)
            if prev is not None:
                if self.lnorm:
                    stage = local_normalisation(stage, (prev.shape[-2], prev.shape[-1]))
                up = F.interpolate(
                    prev[:, None], size=stage.shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
                stage = (stage * up).clamp_min(0)
            out[layer.ref.label] = prev = stage
        return out

    def masks(self, acts: torch.Tensor) -> torch.Tensor:
        """Channels of ``(n, h, w)`` normalised between their percentiles, clamped to [0, 1]."""
        flat = acts.flatten(1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        q = torch.tensor(
            [self.outlier / 100, 1 - self.outlier / 100], device=acts.device, dtype=flat.dtype
        )
        lo, hi = torch.quantile(flat, q, dim=1).to(acts.dtype)[:, :, None, None]
        span = hi - lo
        ok = span > 0
        scaled = torch.where(ok, (acts - lo) / torch.where(ok, span, torch.ones_like(span)), 0.0)
        return scaled.clamp(0, 1)

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """The variant's channel weights from masked passes, ``(B, K)``."""
        acts = layer.activations
        tuner = self.tuner(ctx)
        out = torch.zeros(acts.shape[:2], dtype=torch.float32, device=acts.device)
        for b in range(acts.shape[0]):
            chosen = strongest_channels(acts[b], self.top_channels)
            k = len(chosen)
            base = target_scores(ctx.output[b : b + 1].float(), ctx, b, "probability").float()
            build = functools.partial(self._build, self.masks(acts[b, chosen]), ctx.images[b], k)
            count = 2 * k if self.variant == "plus-minus" else k
            s = self.perturbed(ctx, b, count, build, "probability", tuner)
            if self.variant == "plus":
                out[b, chosen] = s
            elif self.variant == "minus":
                out[b, chosen] = (base - s).clamp_min(0)
            else:
                out[b, chosen] = (s[:k] + base - s[k:]).clamp_min(0)
        return out.to(acts.dtype)

    def _build(
        self, masks: torch.Tensor, image: torch.Tensor, k: int, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = torch.arange(start, stop, device=masks.device)
        m = masks[rows % k]
        up = F.interpolate(m[:, None], size=image.shape[-2:], mode="bilinear", align_corners=False)
        if self.variant == "minus":
            up = 1 - up
        elif self.variant == "plus-minus":
            up = torch.where((rows >= k)[:, None, None, None], 1 - up, up)
        return image[None] * up, None
