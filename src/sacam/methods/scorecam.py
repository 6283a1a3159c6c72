"""The Score-CAM family: channel weights from the scores of the input masked by each channel.

Score-CAM, SS-CAM and IS-CAM share one computation (:class:`MaskScoreCAM`): each channel
``k`` of the layer becomes a mask ``M^k = minmax(upsample(A^k))``, the masked inputs are
scored by the model, and the channel weight is the mean score over the channel's
``steps`` perturbed masks; they differ only in how a mask is perturbed (not at all, by
noise, by scaling).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import torch

from .._seeding import cpu_generator, seeded_noise
from ..explanation import CallContext, LayerData
from ..registry import register_method
from ._options import check_count, check_number, check_seed, check_variant
from ._perturb import PerturbationCAM, ScoreKind, channel_masks, strongest_channels


class MaskScoreCAM(PerturbationCAM):
    """Shared base of Score-CAM, SS-CAM and IS-CAM.

    ``w_k`` is the mean target score of ``x ⊙ perturb(M^k, i)`` over the steps
    ``i = 0..steps-1``. The ``"paper"`` variant scores softmax probabilities and skips
    constant channels (weight 0); the library variant (``library_variant``) takes a softmax
    across channels of the mean class logits, as pytorch-grad-cam / torchcam do.

    Args:
        variant: ``"paper"`` or the class's ``library_variant``.
        top_channels: score only the ``n`` channels with the largest mean activation (the
            others get weight 0, and stay out of the library variant's softmax), as Faster
            Score-CAM does: ``K / n`` times fewer forward passes; not exact.
    """

    library_variant: ClassVar[str] = "softmax"

    def __init__(
        self,
        *args: Any,
        variant: str = "paper",
        top_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_variant(self.name or type(self).__name__, variant, ("paper", self.library_variant))
        self.variant = variant
        self.top_channels = (
            None if top_channels is None else check_count("top_channels", top_channels)
        )

    # ----------------------------------------------------------------- to override
    def steps(self) -> int:
        """Perturbed masks per channel."""
        return 1

    def rows_per_channel(self) -> int:
        """:meth:`steps`: one masked input per perturbed mask."""
        return self.steps()

    def perturb(
        self, masks: torch.Tensor, step: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Masks ``(m, H, W)`` at steps ``step`` ``(m,)`` -> the masks to apply (identity).

        ``noise`` is :meth:`draw`'s ``(m, H, W)`` for these rows (``None`` if it draws none).
        """
        return masks

    def draw(self, rows: int, size: tuple[int, ...], gen: torch.Generator) -> torch.Tensor | None:
        """The random numbers of the next ``rows`` rows, from ``gen`` (``None``: no randomness)."""
        return None

    def generator(self) -> torch.Generator | None:
        """A fresh generator for one image's perturbations (``None``: no randomness)."""
        return None

    # ----------------------------------------------------------------- shared
    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Mean score of each channel's perturbed masked inputs, ``(B, K)``.

        The images' passes run chunk by chunk (:meth:`perturbed_of`): every image draws
        the same random rows (its generator starts afresh from the seed), so a chunk's
        rows are drawn once for all images (:class:`SharedDraws`).
        """
        acts = layer.activations
        library = self.variant == self.library_variant
        kind: ScoreKind = "logit" if library else "probability"
        n = self.steps()
        size = tuple(ctx.images.shape[-2:])
        chosen = [strongest_channels(acts[b], self.top_channels) for b in range(acts.shape[0])]
        if len({len(idx) for idx in chosen}) != 1:
            raise RuntimeError("every image must score the same number of channels")
        draws = SharedDraws(self, size, acts.device, acts.dtype)  # the masks' dtype
        builds = {
            b: functools.partial(self._build, acts[b], idx, ctx.images[b], size, draws)
            for b, idx in enumerate(chosen)
        }
        count = len(chosen[0]) * n
        scores = self.perturbed_of(ctx, count, builds, kind, self.tuner(ctx))
        out = torch.zeros(acts.shape[:2], dtype=torch.float32, device=acts.device)
        scored = torch.zeros_like(out, dtype=torch.bool)
        for b, idx in enumerate(chosen):
            out[b, idx] = scores[b].view(len(idx), n).mean(dim=1)
            scored[b, idx] = True
        if library:  # channels never scored stay out of the softmax
            return torch.softmax(out.masked_fill(~scored, float("-inf")), dim=1)
        return out

    def _build(
        self,
        acts: torch.Tensor,
        chosen: torch.Tensor,
        image: torch.Tensor,
        size: tuple[int, ...],
        draws: SharedDraws,
        start: int,
        stop: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.steps()
        first = start // n
        masks, constant = channel_masks(acts[chosen[first : (stop - 1) // n + 1]], size)
        items = torch.arange(start, stop, device=masks.device)
        rows = items // n - first
        noise = draws.rows(start, stop)
        applied = self.perturb(masks[rows], items % n, noise)
        keep = ~constant[rows] if self.variant == "paper" else None
        return image[None] * applied[:, None], keep


class SharedDraws:
    """A method's random rows, drawn once per chunk for every image of a call.

    Each image's stream restarts from the method's seed, so every image would draw the
    same rows: the chunk ``start..stop-1`` is drawn (on the CPU, in row order, as one
    image alone would) when the first image asks for it, moved to the device and dtype
    once, and handed to the other images: one tensor for all of them, so
    :meth:`MaskScoreCAM.perturb` must not change it in place. Only the last chunk is kept
    (a third of a chunk's 3-channel inputs, alive while the chunk's passes run).
    """

    def __init__(
        self,
        method: MaskScoreCAM,
        size: tuple[int, ...],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.method, self.size, self.device, self.dtype = method, size, device, dtype
        self.gen = method.generator()
        self.key = (0, 0)  # the rows held (none yet); the next chunk starts at key[1]
        self.value: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> torch.Tensor | None:
        """The random numbers of rows ``start..stop-1`` (``None``: the method draws none)."""
        gen = self.gen
        if gen is None:
            return None
        if start == 0 and self.key not in ((0, 0), (0, stop)):
            # the loop starts over (a tuned first call runs again with its settled plan)
            self.gen = gen = self.method.generator() or gen
            self.key = (0, 0)
        if self.key != (start, stop):
            if start != self.key[1]:
                raise RuntimeError(f"rows {start}..{stop} asked out of order (next {self.key[1]})")
            drawn = self.method.draw(stop - start, self.size, gen)
            self.key = (start, stop)
            self.value = None if drawn is None else drawn.to(self.device, self.dtype)
        return self.value


@register_method(
    "score-cam",
    paper="Wang et al., CVPR-W 2020",
    url="https://arxiv.org/abs/1910.01279",
    description="Channel weights are the class probability of the input masked by each channel.",
    family="perturbation",
)
class ScoreCAM(MaskScoreCAM):
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

    Costs K masked forward passes per image, run in batches (``inputs_per_pass``, tuned by
    default, capped by ``max_memory_mb``) under ``torch.inference_mode()`` with the hooks
    removed; nothing of one batch is kept for the next.

    ``top_channels=n`` (off by default, not exact) scores only the ``n`` channels with the
    largest mean activation and gives the others weight 0, as Faster Score-CAM does:
    ``K / n`` times fewer forward passes; docs/performance.md measures its effect on time
    and on the maps.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(1, 3, 16, 16), method="score-cam").shape
        torch.Size([1, 16, 16])
    """

    library_variant = "softmax"

    def __init__(
        self,
        *args: Any,
        variant: Literal["paper", "softmax"] = "paper",
        top_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, variant=variant, top_channels=top_channels, **kwargs)


@register_method(
    "ss-cam",
    paper="Wang et al., arXiv 2020",
    url="https://arxiv.org/abs/2006.14255",
    description="Score-CAM weights averaged over noisy copies of each channel's mask.",
    family="perturbation",
)
class SSCAM(MaskScoreCAM):
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

    Reproducible: the noise comes from a CPU ``torch.Generator`` (then moved to the images'
    device, so CPU and CUDA get the same numbers; :func:`sacam._seeding.seeded_noise`),
    seeded with ``seed`` afresh for each image and drawn as one float32 ``(H, W)`` tensor
    per (channel, sample) in that order, so neither the device, the batch nor
    ``inputs_per_pass`` changes the map. Costs ``K · n_samples`` masked forward passes per
    image, ``inputs_per_pass`` at a time (``top_channels`` as in Score-CAM).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(1, 3, 16, 16), method="ss-cam", n_samples=4).shape
        torch.Size([1, 16, 16])
    """

    library_variant = "torchcam"

    def __init__(
        self,
        *args: Any,
        n_samples: int = 35,
        std: float = 2.0,
        seed: int = 0,
        variant: Literal["paper", "torchcam"] = "paper",
        top_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, variant=variant, top_channels=top_channels, **kwargs)
        self.n_samples = check_count("n_samples", n_samples)
        self.std = check_number("std", std, minimum=0)
        self.seed = check_seed(seed)

    def steps(self) -> int:
        """``n_samples`` noisy copies of each mask."""
        return self.n_samples

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed`` (afresh for each image)."""
        return cpu_generator(self.seed)

    def draw(self, rows: int, size: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        """One standard normal ``(H, W)`` draw per row, in row order, float32 on the CPU."""
        return torch.stack([seeded_noise(size, gen) for _ in range(rows)])

    def perturb(
        self, masks: torch.Tensor, step: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """``M^k + σ ε``, with ``ε`` the row's draw (shared by every image: not changed)."""
        assert noise is not None
        return masks + self.std * noise


@register_method(
    "is-cam",
    paper="Naidu et al., arXiv 2020",
    url="https://arxiv.org/abs/2010.03023",
    description="Score-CAM weights integrated along masks scaled from 0 to the full mask.",
    family="perturbation",
)
class ISCAM(MaskScoreCAM):
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
    IS-CAM. Costs ``K · n_samples`` masked forward passes per image, ``inputs_per_pass`` at a
    time (``top_channels`` as in Score-CAM).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(1, 3, 16, 16), method="is-cam", n_samples=4).shape
        torch.Size([1, 16, 16])
    """

    library_variant = "torchcam"

    def __init__(
        self,
        *args: Any,
        n_samples: int = 10,
        variant: Literal["paper", "torchcam"] = "paper",
        top_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, variant=variant, top_channels=top_channels, **kwargs)
        self.n_samples = check_count("n_samples", n_samples)

    def steps(self) -> int:
        """``n_samples`` steps along the path to each mask."""
        return self.n_samples

    def coefficients(self) -> torch.Tensor:
        """Mask scale of each step, ``(n_samples,)`` float64."""
        i = torch.arange(1, self.n_samples + 1, dtype=torch.float64)
        steps = i * (i + 1) / 2 if self.variant == "torchcam" else i
        return steps / self.n_samples

    def perturb(
        self, masks: torch.Tensor, step: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """The masks scaled by their step's coefficient."""
        coeffs = self.coefficients().to(device=masks.device, dtype=masks.dtype)
        return masks * coeffs[step][:, None, None]
