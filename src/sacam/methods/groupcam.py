"""Group-CAM: Grad-CAM-weighted channel groups as masks, scored against a blurred image."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MethodError
from ..explanation import CallContext, LayerData, normalize_maps
from ..filters import gaussian_blur
from ..registry import register_method
from ._options import check_count
from ._perturb import PerturbationCAM, channel_masks, target_scores


@dataclass
class GroupInspection:
    """What Group-CAM computed at one layer (``Explanation.extras["group-cam"][layer]``).

    Attributes:
        masks: the de-noised initial masks ``M_g``, ``(B, G, h, w)``.
        gains: ``s_g = p^c(masked) − p^c(blurred)``, ``(B, G)``.
        raw: ``Σ_g s_g minmax(M_g)``, ``(B, h, w)``, before ReLU and normalisation.
    """

    masks: torch.Tensor
    gains: torch.Tensor
    raw: torch.Tensor


@register_method(
    "group-cam",
    paper="Zhang et al., arXiv 2021",
    url="https://arxiv.org/abs/2103.13859",
    description="Grad-CAM-weighted channel groups as masks, scored against a blurred image.",
    family="perturbation",
)
class GroupCAM(PerturbationCAM):
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
    replaces it by any function of the ``(B, C, H, W)`` images. Two differences to the
    authors' code: sacam scores each blurred image in a pass of its own (they score the
    blurred batch at once), so no score depends on the other images of the batch; and it
    adds the normalised masks at the layer's resolution and lets the engine upsample,
    where they add the upsampled masks (the same up to bilinear interpolation's rounding
    of each mask's minimum and maximum). pytorch-grad-cam 1.5.7 and torchcam 0.5.0 have
    no Group-CAM.

    Float sensitivity: ``s_g`` is a difference of two probabilities; where masking barely
    moves the score (a weak or untrained model), the ``s_g`` are a few ulps of the
    probabilities apart and the min-max normalisation magnifies their float rounding
    (another ``inputs_per_pass`` or batch composition moves the map by up to
    ``4 G δ / range``, with ``δ`` the rounding of ``s_g`` and ``range`` that of the raw
    map). ``Explanation.extras["group-cam"][layer]`` (:class:`GroupInspection`) holds the
    masks, the ``s_g`` and the raw map to check this.

    Costs one backward pass, one forward pass per blurred image and ``groups`` masked
    forward passes per image (``inputs_per_pass`` at a time).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn(channels=8)
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
        self.groups = check_count("groups", groups)
        self.denoise_quantile = None if denoise_quantile is None else float(denoise_quantile)
        self.blur_kernel = blur_kernel
        self.blur_sigma = float(blur_sigma)
        self.baseline = baseline

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """The probe and clean passes, and one per group (fewer when ``K < groups``)."""
        return 2 + len(torch.arange(shape[1]).chunk(self.groups))

    def group_masks(self, layer: LayerData) -> torch.Tensor:
        """The de-noised initial masks ``M_g``, ``(B, G, h, w)``."""
        weighted = layer.grads.mean(dim=(2, 3), keepdim=True) * layer.activations
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
        tuner = self.tuner(ctx)
        with torch.inference_mode():
            base = self.blurred(ctx.images).clone()
        scores = []
        for b in range(masks.shape[0]):
            build = functools.partial(self._build, masks[b], ctx.images[b], base[b])
            scores.append(self.perturbed(ctx, b, masks.shape[1], build, "probability", tuner))
        # after the masked passes, whose first call settles the tuner: the baseline's
        # pass uses the settled memory format, the same in every call
        base_scores = self._base_scores(ctx, base, tuner.best().channels_last)
        out = torch.zeros(masks.shape[0], masks.shape[2], masks.shape[3], device=masks.device)
        gains = torch.zeros(masks.shape[:2], device=masks.device)
        for b, s in enumerate(scores):
            gains[b] = s - base_scores[b]
            small, _ = normalize_maps(masks[b])
            out[b] = torch.einsum("g,ghw->hw", gains[b], small.float())
        ctx.extras.setdefault("group-cam", {})[layer.ref.label] = GroupInspection(
            masks=masks, gains=gains, raw=out
        )
        return out

    @staticmethod
    def _base_scores(ctx: CallContext, base: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """The baselines' class probabilities, one image per pass as the masked passes.

        A score never depends on which other images share the batch.
        """
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        with torch.inference_mode():
            scores = torch.cat(
                [
                    target_scores(
                        ctx.model(base[i : i + 1].contiguous(memory_format=fmt)).float(),
                        ctx,
                        i,
                        "probability",
                    ).float()
                    for i in range(base.shape[0])
                ]
            )
        return scores.clone()

    @staticmethod
    def _build(
        masks: torch.Tensor, image: torch.Tensor, base: torch.Tensor, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        up, _ = channel_masks(masks[start:stop], tuple(image.shape[-2:]))
        m = up[:, None]
        return image[None] * m + base[None] * (1 - m), None
