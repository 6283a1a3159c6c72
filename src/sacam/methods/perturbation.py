"""Perturbation CAMs: weights from the model's scores on perturbed inputs.

Score-CAM, SS-CAM, IS-CAM and Group-CAM mask the input with maps built from the layer;
Ablation-CAM zeroes the layer's channels one at a time. All of them run their extra
forward passes through one loop, :func:`perturbed_scores`: ``batch_size`` perturbed
inputs at a time, built just before their pass and dropped after it, under
``torch.inference_mode()``; the engine's capture hooks are gone by then.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .._layers import probe
from .._tuning import Plan, measure_plan, memory_cap
from ..core import BaseCAM, CallContext, LayerData, _Capture, normalize_maps
from ..errors import LayerError, MethodError
from ..filters import gaussian_blur
from ..registry import register_method
from ..targets import PerSampleCallables

ScoreKind = Literal["probability", "logit"]
Build = Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]


def target_scores(output: torch.Tensor, ctx: CallContext, b: int, kind: ScoreKind) -> torch.Tensor:
    """Score of sample ``b``'s target on every row of ``output`` (copies of that sample).

    For class targets: the softmax probability (``kind="probability"``) or the logit of the
    class; for callable targets: the callable's score, whatever ``kind``.
    """
    if ctx.class_idx is None:
        fn = ctx.score_fn
        if isinstance(fn, PerSampleCallables):  # copies of sample b: its own callable
            fn = fn.for_sample(b)
        return fn(output)
    c = int(ctx.class_idx[b])
    if kind == "logit":
        return output[:, c]
    return torch.softmax(output.float(), dim=1)[:, c]


def batch_target_scores(output: torch.Tensor, ctx: CallContext, kind: ScoreKind) -> torch.Tensor:
    """Like :func:`target_scores`, for a batch whose row ``b`` belongs to sample ``b``."""
    if ctx.class_idx is None:
        return ctx.score_fn(output)
    values = torch.softmax(output.float(), dim=1) if kind == "probability" else output
    return values.gather(1, ctx.class_idx[:, None].to(output.device))[:, 0]


def perturbed_scores(
    ctx: CallContext,
    b: int,
    count: int,
    build: Build,
    batch_size: int,
    kind: ScoreKind,
    *,
    channels_last: bool = False,
    bf16: bool = False,
) -> torch.Tensor:
    """Target scores of ``count`` perturbed copies of image ``b``, ``(count,)`` float32.

    ``build(start, stop)`` returns the inputs ``start..stop-1`` (a batch of at most
    ``batch_size``) and optionally a bool ``(stop - start,)`` mask of the rows to keep
    (the others score 0). The loop runs under ``torch.inference_mode()``; each batch of
    inputs is built just before its forward pass and released after it. ``channels_last``
    passes the inputs in that memory format (same results); ``bf16`` runs the passes under
    bfloat16 autocast (faster on CPUs with bf16 units, not exact).
    """
    out = torch.zeros(count, dtype=torch.float32, device=ctx.images.device)
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            inputs, keep = build(start, stop)
            if channels_last and inputs.ndim == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
                output = ctx.model(inputs)
            scores = target_scores(output.float(), ctx, b, kind).float()
            if keep is not None:
                scores = torch.where(keep, scores, torch.zeros_like(scores))
            out[start:stop] = scores
            del inputs, scores
    return out


def channel_masks(maps: torch.Tensor, size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-CAM masks: ``minmax(upsample(A^k))`` of ``(n, h, w)`` maps, and constant flags.

    Returns ``(n, H, W)`` masks in [0, 1] (all 0 for a constant map) and a ``(n,)`` bool
    tensor, True where the upsampled map was constant.
    """
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(up)


def _check_count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MethodError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_seed(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MethodError(f"seed must be an int, got {value!r}")
    return value


def _check_variant(method: str, variant: object, allowed: tuple[str, ...]) -> None:
    if variant not in allowed:
        names = " or ".join(repr(a) for a in allowed)
        raise MethodError(f"{method} variant must be {names}, got {variant!r}")


def _image_size(ctx: CallContext) -> tuple[int, ...]:
    return tuple(ctx.images.shape[-2:])


class _PerturbationCAM(BaseCAM):
    """Shared options of the perturbation methods: how their many forward passes run.

    Args:
        batch_size: perturbed inputs per forward pass, or ``"auto"`` (default): the
            fastest batch size and memory format measured once per model and input shape
            (see ``sacam._tuning``), capped by the memory budget. Results do not depend on
            it beyond float rounding.
        max_memory_mb: budget for one batch's estimated live memory; the batch size is cut
            to fit, so peak memory does not grow with the number of channels.
        bf16: run the perturbed passes under bfloat16 autocast (off by default: faster on
            CPUs with bf16 units, but not exact; see docs/performance.md).
    """

    uses_gradients = False

    def __init__(
        self,
        *args: Any,
        batch_size: int | Literal["auto"] = "auto",
        max_memory_mb: float = 1024.0,
        bf16: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if batch_size != "auto":
            _check_count("batch_size", batch_size)
        if not (isinstance(max_memory_mb, int | float) and max_memory_mb > 0):
            raise MethodError(f"max_memory_mb must be > 0, got {max_memory_mb!r}")
        self.batch_size = batch_size
        self.max_memory_mb = float(max_memory_mb)
        self.bf16 = bool(bf16)

    def plan(self, ctx: CallContext) -> Plan:
        """Batch size and memory format for this call's perturbed passes."""
        sample_shape = tuple(ctx.images.shape[1:])
        cap = memory_cap(probe(ctx.model, ctx.images), sample_shape, self.max_memory_mb)
        if self.batch_size != "auto":
            return Plan(min(int(self.batch_size), cap), False)
        return measure_plan(ctx.model, ctx.images[0], cap)

    def _perturbed(
        self,
        ctx: CallContext,
        b: int,
        count: int,
        build: Build,
        kind: ScoreKind,
        plan: Plan | None = None,
    ) -> torch.Tensor:
        plan = plan or self.plan(ctx)
        return perturbed_scores(
            ctx,
            b,
            count,
            build,
            plan.batch_size,
            kind,
            channels_last=plan.channels_last,
            bf16=self.bf16,
        )


@register_method(
    "score-cam",
    paper="Wang et al., CVPR-W 2020",
    url="https://arxiv.org/abs/1910.01279",
    description="Channel weights are the class probability of the input masked by each channel.",
    family="perturbation",
)
class ScoreCAM(_PerturbationCAM):
    r"""Score-CAM (Wang et al., 2020, https://arxiv.org/abs/1910.01279).

    For each channel ``k``: ``M^k = minmax(upsample(A^k))`` (per image), and

    .. math:: w^c_k = p^c(x \odot M^k),\quad L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    ``p^c`` is the softmax probability of the class (for callable targets: the target
    score itself). As in the authors' code, the mask multiplies the model's (normalised)
    input tensor, constant channels are skipped (weight 0), and there is no softmax across
    channels and no baseline.

    ``variant="softmax"`` reproduces pytorch-grad-cam 1.5.7 and torchcam 0.5.0 (the two
    agree): the weights are a softmax across channels of the class *logits* on the masked
    inputs (torchcam subtracts a baseline logit first, which the softmax cancels).

    Costs K masked forward passes per image, run in batches (``batch_size``, measured by
    default, capped by ``max_memory_mb``) under ``torch.inference_mode()`` with the hooks
    removed; nothing of one batch is kept for the next.

    ``top_channels=n`` (off by default, not exact) scores only the ``n`` channels with the
    largest mean activation and gives the others weight 0, as Faster Score-CAM does:
    ``K / n`` times fewer forward passes; docs/performance.md measures its effect on time
    and on the maps.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="score-cam").shape
        torch.Size([1, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        variant: Literal["paper", "softmax"] = "paper",
        top_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_variant("score-cam", variant, ("paper", "softmax"))
        if top_channels is not None:
            _check_count("top_channels", top_channels)
        self.variant = variant
        self.top_channels = top_channels

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Score of each channel's masked input, ``(B, K)``."""
        acts = layer.activations
        kind: ScoreKind = "logit" if self.variant == "softmax" else "probability"
        k_count = acts.shape[1]
        n = k_count if self.top_channels is None else min(self.top_channels, k_count)
        out = torch.zeros(acts.shape[0], k_count, dtype=torch.float32, device=acts.device)
        scored = torch.zeros_like(out, dtype=torch.bool)
        for b in range(acts.shape[0]):
            chosen = acts[b].mean((1, 2)).topk(n).indices
            build = functools.partial(self._build, acts[b, chosen], ctx.images[b], _image_size(ctx))
            out[b, chosen] = self._perturbed(ctx, b, n, build, kind)
            scored[b, chosen] = True
        if self.variant == "softmax":  # channels never scored stay out of the softmax
            return torch.softmax(out.masked_fill(~scored, float("-inf")), dim=1)
        return out

    def _build(
        self, acts: torch.Tensor, image: torch.Tensor, size: tuple[int, ...], start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        masks, constant = channel_masks(acts[start:stop], size)
        keep = ~constant if self.variant == "paper" else None
        return image[None] * masks[:, None], keep


@register_method(
    "ss-cam",
    paper="Wang et al., arXiv 2020",
    url="https://arxiv.org/abs/2006.14255",
    description="Score-CAM weights averaged over noisy copies of each channel's mask.",
    family="perturbation",
)
class SSCAM(_PerturbationCAM):
    r"""SS-CAM: Smoothed Score-CAM (Wang et al., 2020, https://arxiv.org/abs/2006.14255).

    Score-CAM with each mask smoothed by noise: with ``M^k = minmax(upsample(A^k))`` and
    ``n`` draws ``ε_m ~ N(0, σ²)`` of the mask's shape (the same noise for every colour
    channel),

    .. math:: w^c_k = \frac{1}{n}\sum_{m=1}^{n} p^c\big(x \odot (M^k + ε_m)\big),\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    Default ``variant="paper"``: probabilities averaged, constant channels skipped (weight
    0) as in Score-CAM. ``variant="torchcam"`` reproduces torchcam 0.5.0's ``SSCAM``: a
    softmax across channels of the averaged class *logits* (its baseline logit cancels).
    pytorch-grad-cam 1.5.7 has no SS-CAM. Defaults ``n_samples=35``, ``std=2.0`` are
    torchcam's.

    Reproducible: the noise comes from a ``torch.Generator`` on the images' device (CPU
    and CUDA generators give different streams), seeded with ``seed`` afresh for each
    image and drawn as one ``(H, W)`` tensor per (channel, sample) in that order, so neither
    the batch nor ``batch_size`` changes the map. Costs ``K · n_samples`` masked forward
    passes per image, ``batch_size`` at a time.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="ss-cam", n_samples=4).shape
        torch.Size([1, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        n_samples: int = 35,
        std: float = 2.0,
        seed: int = 0,
        variant: Literal["paper", "torchcam"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_variant("ss-cam", variant, ("paper", "torchcam"))
        if not (isinstance(std, int | float) and std >= 0 and math.isfinite(std)):
            raise MethodError(f"std must be a finite number >= 0, got {std!r}")
        self.n_samples = _check_count("n_samples", n_samples)
        self.std = float(std)
        self.seed = _check_seed(seed)
        self.variant = variant

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Noise-averaged score of each channel's masked input, ``(B, K)``."""
        acts = layer.activations
        n, k_count = self.n_samples, acts.shape[1]
        kind: ScoreKind = "logit" if self.variant == "torchcam" else "probability"
        rows = []
        for b in range(acts.shape[0]):
            gen = torch.Generator(device=ctx.images.device)
            gen.manual_seed(self.seed)
            build = functools.partial(self._build, acts[b], ctx.images[b], gen)
            scores = self._perturbed(ctx, b, k_count * n, build, kind)
            rows.append(scores.view(k_count, n).mean(dim=1))
        out = torch.stack(rows)
        return torch.softmax(out, dim=1) if self.variant == "torchcam" else out

    def _build(
        self, acts: torch.Tensor, image: torch.Tensor, gen: torch.Generator, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.n_samples
        first = start // n
        masks, constant = channel_masks(acts[first : (stop - 1) // n + 1], tuple(image.shape[-2:]))
        rows = torch.arange(start, stop, device=masks.device) // n - first
        noise = torch.stack(
            [
                torch.randn(masks.shape[-2:], generator=gen, dtype=masks.dtype, device=masks.device)
                for _ in range(stop - start)
            ]
        )
        noisy = masks[rows] + self.std * noise
        keep = ~constant[rows] if self.variant == "paper" else None
        return image[None] * noisy[:, None], keep


@register_method(
    "is-cam",
    paper="Naidu et al., arXiv 2020",
    url="https://arxiv.org/abs/2010.03023",
    description="Score-CAM weights integrated along masks scaled from 0 to the full mask.",
    family="perturbation",
)
class ISCAM(_PerturbationCAM):
    r"""IS-CAM: Integrated Score-CAM (Naidu et al., 2020, https://arxiv.org/abs/2010.03023).

    The Score-CAM score integrated along the path from the empty mask to ``M^k`` (a
    right Riemann sum of ``n_samples`` steps):

    .. math:: w^c_k = \frac{1}{N}\sum_{i=1}^{N} p^c\Big(x \odot \frac{i}{N} M^k\Big),\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    with ``M^k = minmax(upsample(A^k))`` and constant channels skipped, as in Score-CAM
    (default ``variant="paper"``, sacam's reading of the paper).
    ``variant="torchcam"`` reproduces torchcam 0.5.0's ``ISCAM``, which accumulates the
    coefficients (step ``i`` uses ``(1 + 2 + … + i)/N``, up to ``(N + 1)/2``) and takes a
    softmax across channels of the averaged class *logits*. pytorch-grad-cam 1.5.7 has no
    IS-CAM. Costs ``K · n_samples`` masked forward passes per image, ``batch_size`` at a
    time.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="is-cam", n_samples=4).shape
        torch.Size([1, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        n_samples: int = 10,
        variant: Literal["paper", "torchcam"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_variant("is-cam", variant, ("paper", "torchcam"))
        self.n_samples = _check_count("n_samples", n_samples)
        self.variant = variant

    def coefficients(self) -> torch.Tensor:
        """Mask scale of each step, ``(n_samples,)`` float64."""
        i = torch.arange(1, self.n_samples + 1, dtype=torch.float64)
        steps = i * (i + 1) / 2 if self.variant == "torchcam" else i
        return steps / self.n_samples

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Path-averaged score of each channel's scaled masks, ``(B, K)``."""
        acts = layer.activations
        n, k_count = self.n_samples, acts.shape[1]
        kind: ScoreKind = "logit" if self.variant == "torchcam" else "probability"
        coeffs = self.coefficients().to(device=acts.device, dtype=acts.dtype)
        rows = []
        for b in range(acts.shape[0]):
            build = functools.partial(self._build, acts[b], ctx.images[b], coeffs)
            scores = self._perturbed(ctx, b, k_count * n, build, kind)
            rows.append(scores.view(k_count, n).mean(dim=1))
        out = torch.stack(rows)
        return torch.softmax(out, dim=1) if self.variant == "torchcam" else out

    def _build(
        self, acts: torch.Tensor, image: torch.Tensor, coeffs: torch.Tensor, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.n_samples
        first = start // n
        masks, constant = channel_masks(acts[first : (stop - 1) // n + 1], tuple(image.shape[-2:]))
        items = torch.arange(start, stop, device=masks.device)
        rows = items // n - first
        scaled = masks[rows] * coeffs[items % n][:, None, None]
        keep = ~constant[rows] if self.variant == "paper" else None
        return image[None] * scaled[:, None], keep


ABLATION_CAM_URL = (
    "https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_"
    "Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_"
    "paper.pdf"
)


@register_method(
    "ablation-cam",
    paper="Desai & Ramaswamy, WACV 2020",
    url=ABLATION_CAM_URL,
    description="Channel weights are the relative drop of the score when the channel is zeroed.",
    family="perturbation",
)
class AblationCAM(_PerturbationCAM):
    r"""Ablation-CAM (Desai & Ramaswamy, WACV 2020).

    Paper:
    https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf

    With ``y^c`` the target score (the logit by default) and ``y^c_k`` the same score
    when channel ``k`` of the target layer is set to 0 (the rest of the network then runs
    on the ablated output):

    .. math:: w^c_k = \frac{y^c - y^c_k}{y^c},\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    Where ``y^c = 0`` the division is skipped (``w^c_k = -y^c_k``).
    ``variant="pytorch-grad-cam"`` follows pytorch-grad-cam 1.5.7, which sets the
    channel to 0 only where the layer's minimum activation is 0 and otherwise to that
    minimum minus ``1e7`` (sacam takes the minimum of the image's clean activations;
    pytorch-grad-cam's running minimum also sees rows ablated earlier in its batch).
    torchcam 0.5.0 has no Ablation-CAM.

    The ablation is a forward hook on the target layer, registered only for these passes
    and removed in a ``finally`` (even if a pass raises). Costs K forward passes per image,
    ``batch_size`` copies of the image at a time, channel ``start + i`` zeroed in row
    ``i``. Needs the layer's own ``(B, K, h, w)`` output (no ``reshape_transform``).

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="ablation-cam").shape
        torch.Size([1, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        variant: Literal["paper", "pytorch-grad-cam"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_variant("ablation-cam", variant, ("paper", "pytorch-grad-cam"))
        if self.reshape_transform is not None:
            raise MethodError(
                "ablation-cam zeroes channels of the layer's own output, so it cannot use a "
                "reshape_transform: pick a layer with a (B, K, h, w) output"
            )
        self.variant = variant

    def fill_value(self, acts: torch.Tensor) -> float:
        """Value an ablated channel takes, for one image's activations ``(K, h, w)``."""
        low = float(acts.min())
        if self.variant == "paper" or low == 0:
            return 0.0
        return low - 1e7

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Relative score drop when each channel is ablated, ``(B, K)``."""
        acts = layer.activations
        k_count = acts.shape[1]
        ablated = []
        plan = self.plan(ctx)  # measured before the ablation hook exists
        for b in range(acts.shape[0]):
            channels: list[torch.Tensor] = []
            edit = functools.partial(self._ablate, channels, self.fill_value(acts[b]))
            build = functools.partial(self._build, ctx.images[b], channels)
            with _Capture([layer.ref], with_grad=False, edit=edit):
                ablated.append(self._perturbed(ctx, b, k_count, build, "logit", plan))
        y_k = torch.stack(ablated)
        y = batch_target_scores(ctx.output, ctx, "logit").float()[:, None]  # as y_k
        return torch.where(y != 0, (y - y_k) / torch.where(y != 0, y, 1.0), -y_k)

    @staticmethod
    def _build(
        image: torch.Tensor, channels: list[torch.Tensor], start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # the hook reads which channel each row ablates from ``channels``
        channels[:] = [torch.arange(start, stop, device=image.device)]
        return image[None].repeat(stop - start, 1, 1, 1), None

    @staticmethod
    def _ablate(
        channels: list[torch.Tensor], fill: float, _label: str, out: torch.Tensor
    ) -> torch.Tensor:
        (ks,) = channels
        if out.ndim != 4 or out.shape[0] != ks.shape[0]:
            raise LayerError(
                f"ablation-cam expected the layer to output ({ks.shape[0]}, K, h, w) on the "
                f"ablation batch, got {tuple(out.shape)}"
            )
        out = out.clone()
        out[torch.arange(ks.shape[0], device=out.device), ks] = fill
        return out


@register_method(
    "group-cam",
    paper="Zhang et al., arXiv 2021",
    url="https://arxiv.org/abs/2103.13859",
    description="Grad-CAM-weighted channel groups as masks, scored against a blurred image.",
    family="perturbation",
)
class GroupCAM(_PerturbationCAM):
    r"""Group-CAM (Zhang, Rao & Yang, 2021, https://arxiv.org/abs/2103.13859).

    As in the authors' code: the Grad-CAM-weighted activations ``w_k A^k`` (``w_k`` the
    spatial mean gradient) are split into ``groups`` consecutive channel groups
    (``torch.chunk``, so fewer groups when ``K < groups``); each group gives the initial
    mask ``M_g = ReLU(Σ_{k∈g} w_k A^k)``, de-noised by zeroing its values not above
    their ``denoise_quantile`` quantile (70 %; ``None`` keeps all). With
    ``\hat M_g = minmax(upsample(M_g))`` and ``\tilde x`` the blurred image,

    .. math:: s_g = p^c\big(x \odot \hat M_g + \tilde x \odot (1 - \hat M_g)\big)
              - p^c(\tilde x),\quad
              L^c = \mathrm{ReLU}\Big(\sum_g s_g\, \mathrm{minmax}(M_g)\Big)

    ``p^c``: softmax probability of the class (the target score for callable targets).
    Constant masks are skipped. The blur: :func:`gaussian_blur` with ``blur_kernel=51``,
    ``blur_sigma=50`` (kornia's ``gaussian_blur2d`` with reflected borders, as the
    authors use; the kernel is cut to the image on images under 51 pixels); ``baseline``
    replaces it by any function of the ``(B, C, H, W)`` images. One difference to the
    authors' code: sacam adds the normalised masks at the layer's resolution and lets the
    engine upsample, where they add the upsampled masks (the same up to bilinear
    interpolation's rounding of each mask's minimum and maximum). pytorch-grad-cam
    1.5.7 and torchcam 0.5.0 have no Group-CAM. Costs one backward pass, one forward pass
    of the blurred batch and ``groups`` masked forward passes per image (``batch_size`` at
    a time).

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 2))
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="group-cam", groups=4).shape
        torch.Size([1, 16, 16])
    """

    uses_gradients = True  # its groups are weighted by Grad-CAM

    def __init__(
        self,
        *args: Any,
        groups: int = 32,
        denoise_quantile: float | None = 0.7,
        blur_kernel: int = 51,
        blur_sigma: float = 50.0,
        baseline: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if denoise_quantile is not None and not (
            isinstance(denoise_quantile, int | float) and 0 <= denoise_quantile <= 1
        ):
            raise MethodError(
                f"denoise_quantile must be None or in [0, 1], got {denoise_quantile!r}"
            )
        if not isinstance(blur_kernel, int) or blur_kernel < 1 or blur_kernel % 2 == 0:
            raise MethodError(f"blur_kernel must be a positive odd int, got {blur_kernel!r}")
        if not (isinstance(blur_sigma, int | float) and blur_sigma > 0):
            raise MethodError(f"blur_sigma must be > 0, got {blur_sigma!r}")
        if baseline is not None and not callable(baseline):
            raise MethodError("baseline must be a callable mapping images to images, or None")
        self.groups = _check_count("groups", groups)
        self.denoise_quantile = None if denoise_quantile is None else float(denoise_quantile)
        self.blur_kernel = blur_kernel
        self.blur_sigma = float(blur_sigma)
        self.baseline = baseline

    def group_masks(self, layer: LayerData) -> torch.Tensor:
        """The de-noised initial masks ``M_g``, ``(B, G, h, w)``."""
        if layer.gradients is None:  # pragma: no cover - the engine always provides them
            raise RuntimeError("group-cam called without gradients")
        weighted = layer.gradients.mean(dim=(2, 3), keepdim=True) * layer.activations
        masks = torch.stack([g.sum(dim=1) for g in weighted.chunk(self.groups, dim=1)], dim=1)
        masks = masks.clamp_min(0)
        if self.denoise_quantile is not None:
            flat = masks.flatten(2).float()
            thr = torch.quantile(flat, self.denoise_quantile, dim=2).to(masks.dtype)
            masks = torch.where(masks > thr[:, :, None, None], masks, torch.zeros_like(masks))
        return masks

    def blurred(self, images: torch.Tensor) -> torch.Tensor:
        """The baseline images (the Gaussian blur unless ``baseline`` is set), ``(B, C, H, W)``."""
        if self.baseline is None:
            return gaussian_blur(images, self.blur_kernel, self.blur_sigma)
        out = self.baseline(images)
        if not isinstance(out, torch.Tensor) or out.shape != images.shape:
            raise MethodError(
                f"group-cam's baseline must return a tensor of shape {tuple(images.shape)}"
            )
        return out

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``Σ_g s_g minmax(M_g)`` at the layer's resolution, ``(B, h, w)``."""
        masks = self.group_masks(layer)
        plan = self.plan(ctx)
        with torch.inference_mode():
            base = self.blurred(ctx.images)
            fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
            out_base = ctx.model(base.contiguous(memory_format=fmt))  # as the masked passes
            base_scores = batch_target_scores(out_base, ctx, "probability").float()
        base = base.clone()
        base_scores = base_scores.clone()
        out = torch.zeros(masks.shape[0], masks.shape[2], masks.shape[3], device=masks.device)
        for b in range(masks.shape[0]):
            build = functools.partial(self._build, masks[b], ctx.images[b], base[b])
            s = self._perturbed(ctx, b, masks.shape[1], build, "probability", plan)
            small, _ = normalize_maps(masks[b])
            out[b] = torch.einsum("g,ghw->hw", s - base_scores[b], small.float())
        return out

    @staticmethod
    def _build(
        masks: torch.Tensor, image: torch.Tensor, base: torch.Tensor, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        up, _ = channel_masks(masks[start:stop], tuple(image.shape[-2:]))
        m = up[:, None]
        return image[None] * m + base[None] * (1 - m), None
