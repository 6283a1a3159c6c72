"""SESS (Tang et al., ECCV 2022): saliency enhancing with scaling and sliding, over any base."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .._speed.memory import passes_within
from ..core import BaseCAM
from ..errors import MethodError
from ..explanation import CallContext
from ..filters import gaussian_blur
from ..registry import register_method
from ..targets import PerSampleCallables, ScoreFn, TargetsLike, scored_output
from ._options import base_method, check_bool, check_count, check_number, check_variant

__all__ = ["SESS", "window_starts"]

SESS_URL = "https://arxiv.org/abs/2207.01769"


def window_starts(length: int, step: int, window: int) -> list[int]:
    """Starts of the windows covering ``0..length-1``; the last is shifted back inside.

    Example:
        >>> window_starts(10, 4, 4)  # 0-3, 4-7, then 6-9 (not 8-11)
        [0, 4, 6]
    """
    starts: list[int] = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


@dataclass
class _Patch:
    """One window: the scaled image's size and the window's top-left corner in it."""

    scaled: tuple[int, int]
    top: int
    left: int


def _scaled_size(h: int, w: int, short: int) -> tuple[int, int]:
    """Size with the shorter side resized to ``short`` (torchvision's ``resize(x, short)``)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


@register_method(
    "sess",
    paper="Tang et al., ECCV 2022",
    url=SESS_URL,
    description="A base CAM (Grad-CAM) of sliding windows over the image at several scales, "
    "weighted by each window's class score and fused: robust to scale and repeated objects.",
    family="gradient",
)
class SESS(BaseCAM):
    r"""SESS, Saliency Enhancing with Scaling and Sliding (Tang et al., ECCV 2022, https://arxiv.org/abs/2207.01769).

    The image is resized so that its shorter side is each of the ``scales`` (default: 12
    scales ``s, s + r, s + 2r, …`` with ``s`` the window and ``r = round(2s/7)``: 224, 288,
    …, 928 for a 224-pixel input, as in the paper); a ``window_size`` square (default:
    the shorter side of the input) slides over each scaled image with stride
    ``step_size`` (default: the window; the last window of a row or column is shifted
    back inside). For every window ``p``: its class score ``s_p`` (softmax probability of
    the class, ``score="probability"``, or the logit clipped at 0; a callable target's
    value clipped at 0), and the ``base`` method's map ``M_p`` of the window (normalised
    to [0, 1]). After dropping the ``pre_filter_ratio`` lowest-scoring windows, each
    ``M_p · s_p / max_p s_p`` is pasted at its place in a zero canvas of the scaled
    image's size and resized bilinearly to the input (``C_p``). Fusion (``pool``):

    .. math:: L = \frac{\sum_p C_p\,\mathbb{1}[C_p > θ]}{\sum_p \mathbb{1}[C_p > θ]}
              \ (\text{"mean"}),\qquad L = \max_p C_p\ (\text{"max"})

    (0 where no window counts), then a Gaussian blur (11 × 11, σ = 5, reflected borders;
    ``smooth=False`` skips it) and min-max normalisation. Defaults are pytorch-grad-cam
    1.5.7's ``SESS`` (Grad-CAM base, θ = 0, no pre-filter); torchcam 0.5.0 has none.

    The map has the input's resolution, with ``upsample=False`` too. Cost: one forward
    pass per window for the scores and the base method per window (Grad-CAM: a forward
    and a backward pass), ``windows_per_pass`` windows at a time: about 155 windows per
    224 × 224 image with the defaults, so fewer ``scales`` make it much faster.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn()
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="sess", scales=[16, 24]).shape
        torch.Size([1, 16, 16])
    """

    many_passes = True

    def __init__(
        self,
        *args: Any,
        base: str = "grad-cam",
        base_options: Mapping[str, Any] | None = None,
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: int | None = None,
        step_size: int | None = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: Literal["mean", "max"] = "mean",
        smooth: bool = True,
        score: Literal["probability", "logit"] = "probability",
        windows_per_pass: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.base = base_method(self, "sess", base, base_options)
        if scales is not None:
            if isinstance(scales, str | bytes) or not isinstance(scales, Sequence) or not scales:
                raise MethodError(f"sess scales must be a non-empty list of ints, got {scales!r}")
            scales = [check_count("each of sess's scales", s) for s in scales]
        self.scales = None if scales is None else list(scales)
        self.num_scales = check_count("num_scales", num_scales)
        self.scale_step_ratio = check_number("scale_step_ratio", scale_step_ratio, minimum=0)
        self.window_size = None if window_size is None else check_count("window_size", window_size)
        self.step_size = None if step_size is None else check_count("step_size", step_size)
        self.pre_filter_ratio = check_number("pre_filter_ratio", pre_filter_ratio, minimum=0)
        if self.pre_filter_ratio >= 1:
            raise MethodError(f"pre_filter_ratio must be below 1, got {pre_filter_ratio!r}")
        self.theta = check_number("theta", theta)
        self.pool = check_variant("sess pool", pool, ("mean", "max"))
        self.smooth = check_bool("smooth", smooth)
        self.score = check_variant("sess score", score, ("probability", "logit"))
        self.windows_per_pass = check_count("windows_per_pass", windows_per_pass)

    def raw_maps(
        self, images: torch.Tensor, targets: TargetsLike, keep: bool = False
    ) -> tuple[CallContext, dict[str, torch.Tensor]]:
        """Each image's fused windows at the input's resolution, labelled ``"sess"``."""
        output, score_fn, class_idx, scores = scored_output(self.logits_model, images, targets)
        ctx = CallContext.detached(self.logits_model, images, output, score_fn, class_idx, scores)
        raw = torch.stack([self._one_image(ctx, b) for b in range(images.shape[0])])
        return ctx, {"sess": raw}

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """The probe pass, one row per window to score it and one per kept window."""
        n = len(self.windows(*image_size)[1])
        return 1 + n + n - self.dropped(n)

    def windows(self, h: int, w: int) -> tuple[int, list[_Patch]]:
        """The window side and every window (scaled size, top, left) of an ``h × w`` image."""
        window = self.window_size if self.window_size is not None else min(h, w)
        step = self.step_size if self.step_size is not None else window
        scales = self.scales
        if scales is None:
            r = int(round(window * self.scale_step_ratio))
            scales = [window + r * i for i in range(self.num_scales)]
        patches: list[_Patch] = []
        for s in scales:
            if s < window:
                raise MethodError(f"every sess scale must be at least the window {window}, got {s}")
            sh, sw = _scaled_size(h, w, s)
            for top in window_starts(sh, step, window):
                for left in window_starts(sw, step, window):
                    patches.append(_Patch((sh, sw), top, left))
        return window, patches

    def dropped(self, n: int) -> int:
        """How many of ``n`` windows the pre-filter drops (the lowest-scoring)."""
        return int(n * self.pre_filter_ratio)

    def _crops(self, image: torch.Tensor, window: int, patches: list[_Patch]) -> torch.Tensor:
        """The windows of one ``(C, H, W)`` image, ``(n, C, window, window)``."""
        scaled: dict[tuple[int, int], torch.Tensor] = {}
        crops = []
        for p in patches:
            if p.scaled not in scaled:
                same = p.scaled == tuple(image.shape[-2:])
                scaled[p.scaled] = (
                    image[None]
                    if same
                    else F.interpolate(
                        image[None],
                        size=p.scaled,
                        mode="bilinear",
                        align_corners=False,
                        antialias=True,
                    )
                )
            crops.append(scaled[p.scaled][0, :, p.top : p.top + window, p.left : p.left + window])
        return torch.stack(crops)

    def _target(self, ctx: CallContext, b: int) -> tuple[Callable[[int], TargetsLike], ScoreFn]:
        """Image ``b``'s targets for ``n`` windows (base method), and the score of windows."""
        if ctx.class_idx is not None:
            c = int(ctx.class_idx[b])
            if self.score == "probability":
                return (lambda n: [c] * n), (lambda out: torch.softmax(out, dim=1)[:, c])
            return (lambda n: [c] * n), (lambda out: out[:, c])
        fn = ctx.score_fn
        one = fn.for_sample(b) if isinstance(fn, PerSampleCallables) else fn
        return (lambda n: [one] * n), one

    def _one_image(self, ctx: CallContext, b: int) -> torch.Tensor:
        h, w = ctx.images.shape[-2:]
        window, patches = self.windows(h, w)
        crops = self._crops(ctx.images[b], window, patches)
        targets_for, score_of = self._target(ctx, b)
        step = passes_within(ctx.model, self.windows_per_pass)  # a fixed-batch export: 1
        with torch.inference_mode():
            s = torch.cat(
                [
                    score_of(ctx.model(crops[i : i + step])).clamp_min(0)
                    for i in range(0, len(crops), step)
                ]
            ).clone()
        order = torch.sort(s, stable=True).indices[self.dropped(len(s)) :]
        top = s[order[-1]]
        weights = s[order] / top if top > 0 else torch.ones_like(s[order])
        total = ctx.images.new_zeros(h, w)
        counts = ctx.images.new_zeros(h, w)
        for i in range(0, len(order), step):
            idx = order[i : i + step]
            maps = self.base(crops[idx], targets_for(len(idx)))
            for m, weight, j in zip(maps, weights[i : i + step], idx.tolist(), strict=True):
                pasted = self._paste(m.to(total.dtype) * weight, patches[j], (h, w))
                if self.pool == "max":
                    total = torch.maximum(total, pasted)
                else:
                    keep = pasted > self.theta
                    total = total + torch.where(keep, pasted, 0.0)
                    counts = counts + keep
        if self.pool == "mean":
            total = torch.where(counts > 0, total / counts.clamp_min(1), 0.0)
        if self.smooth:
            total = gaussian_blur(total[None, None], 11, 5.0)[0, 0]
        return total

    @staticmethod
    def _paste(cam: torch.Tensor, patch: _Patch, size: tuple[int, int]) -> torch.Tensor:
        """``cam`` placed in a zero canvas of the scaled image, resized to ``size``."""
        canvas = cam.new_zeros(patch.scaled)
        n = cam.shape[-1]
        canvas[patch.top : patch.top + n, patch.left : patch.left + n] = cam
        if tuple(patch.scaled) == tuple(size):
            return canvas
        up = F.interpolate(canvas[None, None], size=size, mode="bilinear", align_corners=False)
        return up[0, 0]
