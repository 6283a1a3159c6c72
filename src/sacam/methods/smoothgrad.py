"""Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ averaged over noisy copies of the input."""

from __future__ import annotations

from typing import Any, Literal

import torch

from .._seeding import cpu_generator, seeded_noise
from ..core import BaseCAM
from ..explanation import CallContext, LayerData, spatial_dims
from ..registry import register_method
from ._options import check_count, check_number, check_seed, check_variant
from .gradient import gradcampp_alpha

__all__ = ["SmoothGradCAMPlusPlus"]


@register_method(
    "smooth-grad-cam++",
    paper="Omeiza et al., arXiv 2019",
    url="https://arxiv.org/abs/1908.01224",
    description="Grad-CAM++ with its gradient terms averaged over noisy copies of the input.",
    family="gradient",
)
class SmoothGradCAMPlusPlus(BaseCAM):
    r"""Smooth Grad-CAM++ (Omeiza et al., 2019, https://arxiv.org/abs/1908.01224).

    SmoothGrad applied to Grad-CAM++: ``n_samples`` noisy copies
    ``x_m = x + ε_m``, ``ε_m ~ N(0, σ²)``, ``σ = std_spread · (max x − min x)`` (per image;
    ``std`` sets an absolute σ instead). With ``g_m = ∂y^c/∂A^k`` on copy ``m`` (``y^c`` the
    logit, under Grad-CAM++'s exponential assumption, so the higher derivatives are powers
    of ``g_m``) and ``\bar{D^p} = \frac{1}{n}\sum_m g_m^p``:

    .. math:: \alpha^{kc}_{ij} = \frac{\bar{D^2}_{ij}}{2\bar{D^2}_{ij} + \bar{D^3}_{ij}
              \sum_{ab} A^k_{ab}},\quad
              w^c_k = \sum_{ij} \alpha^{kc}_{ij}\,\mathrm{ReLU}(\bar{D^1}_{ij}),\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    with ``A`` the activations of the clean image (default ``variant="paper"``, sacam's
    reading of the paper: the derivatives are averaged over the copies, then combined as in
    Grad-CAM++). torchcam notes that the paper prints ``\bar{D^1}`` in the numerator of
    ``α``; sacam, like torchcam, uses Grad-CAM++'s ``\bar{D^2}``. ``α`` is 0 where undefined.

    ``variant="mean-weights"``: the Grad-CAM++ weights of each noisy copy (its own
    activations and gradients) averaged over the copies. ``variant="torchcam"``:
    torchcam 0.5.0's ``SmoothGradCAMpp`` (its defaults are ``n_samples=4`` and an absolute
    ``std=0.3``): ``α`` with the denominator ``2\bar{D^2} + \sum_{ab} \bar{D^3}_{ab} A_{ab}``
    and ``ReLU`` of the *last* copy's gradient in place of ``\bar{D^1}``.
    pytorch-grad-cam 1.5.7 has no Smooth Grad-CAM++.

    Defaults: ``n_samples=16``, ``std_spread=0.15`` (SmoothGrad's advice: σ at 10-20 % of
    the input range). Reproducible: the noise comes from a CPU ``torch.Generator`` seeded
    with ``seed`` and is moved to the images' device (so CPU and CUDA get the same noise;
    :func:`sacam._seeding.seeded_noise`), drawn in float32 as ``n_samples`` tensors of
    shape ``(C, H, W)`` in turn and shared by every image of the batch (scaled by each
    image's own σ), so a batch gives the maps of its images explained one by one.
    Costs ``n_samples`` extra forward and backward passes of the batch, made with the
    engine's capture hook and ``torch.autograd.grad`` (the model's ``.grad`` fields stay untouched).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn()
        >>> x = torch.rand(1, 3, 16, 16)
        >>> a = sacam.explain(net, x, method="smooth-grad-cam++", n_samples=4, seed=1)
        >>> torch.equal(a, sacam.explain(net, x, method="smooth-grad-cam++", n_samples=4, seed=1))
        True
    """

    volumes = True

    def __init__(
        self,
        *args: Any,
        n_samples: int = 16,
        std_spread: float = 0.15,
        std: float | None = None,
        seed: int = 0,
        variant: Literal["paper", "mean-weights", "torchcam"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_variant("smooth-grad-cam++", variant, ("paper", "mean-weights", "torchcam"))
        self.n_samples = check_count("n_samples", n_samples)
        self.std_spread = check_number("std_spread", std_spread, minimum=0)
        self.std = None if std is None else check_number("std", std, minimum=0)
        self.seed = check_seed(seed)
        self.variant = variant

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """The probe and clean passes, and one pass per noisy copy (``n_samples > 1``)."""
        return 2 + (self.n_samples if self.n_samples > 1 else 0)

    def noise_sigma(self, images: torch.Tensor) -> torch.Tensor:
        """Noise standard deviation of each image, ``(B,)``."""
        if self.std is not None:
            return torch.full(images.shape[:1], self.std, dtype=images.dtype, device=images.device)
        flat = images.flatten(1)
        return self.std_spread * (flat.amax(dim=1) - flat.amin(dim=1))

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Smoothed Grad-CAM++ channel weights, ``(B, K)``."""
        images = ctx.images
        sigma = self.noise_sigma(images).view((-1,) + (1,) * (images.ndim - 1))
        gen = cpu_generator(self.seed)
        acts = layer.activations
        mean_w = torch.zeros(acts.shape[:2], dtype=acts.dtype, device=acts.device)
        d1, d2, d3 = (torch.zeros_like(acts) for _ in range(3))
        for _ in range(self.n_samples):
            noise = seeded_noise(images.shape[1:], gen, images.device, images.dtype)
            a, g = self.gradient_pass(images + sigma * noise, layer.ref, ctx.score_fn)
            if self.variant == "mean-weights":
                g2 = g * g
                alpha = gradcampp_alpha(g2, g2 * g, a, "paper")
                mean_w += (alpha * g.clamp_min(0)).sum(dim=spatial_dims(g)) / self.n_samples
            else:
                d1 = g if self.variant == "torchcam" else d1 + g / self.n_samples
                d2 = d2 + g * g / self.n_samples
                d3 = d3 + g * g * g / self.n_samples
        if self.variant == "mean-weights":
            return mean_w
        alpha = gradcampp_alpha(d2, d3, acts, self.variant)
        return (alpha * d1.clamp_min(0)).sum(dim=spatial_dims(d1))
