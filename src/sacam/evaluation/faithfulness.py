"""Faithfulness metrics: Average Drop / Increase / Gain and Deletion / Insertion.

Each metric is a plain function returning per-sample values (the protocols of
docs/evaluation.md); the registered metric functions at the end of the file adapt them
to the runner. ROAD lives in :mod:`sacam.evaluation.road`.

Conventions (from the evaluation protocols):

- the class is each sample's top-1 on the clean image unless ``targets`` are given;
- scores are the class's probabilities (softmax; sigmoid for multi-label outputs);
- maps are ``(B, H, W)`` in [0, 1] at the input size (as :func:`sacam.explain` returns);
- the model's output is read as logits as the methods read it (tuple, dict, ``.logits``;
  ``output_transform=`` for anything else, :func:`sacam._outputs.to_logits`);
- where a metric masks in pixel space it needs the model's ``Preprocess`` (to go from
  the normalised tensor to [0, 1] pixels and back); without one it multiplies the
  normalised tensor, which moves pixels towards the dataset mean, and says so in its
  docstring.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .._hooks import model_guard
from .._outputs import OutputTransform, logits_model, probabilities
from .._speed.tuner import check_inputs_per_pass
from ..errors import InputError
from ..filters import gaussian_blur
from ..preprocess import Preprocess
from ..scores import predict
from ..targets import class_indices
from .curves import CurveResult, curve, pixel_rank, tuned_plan
from .registry import MetricBatch, MetricOutput, register_metric

__all__ = [
    "CurveResult",
    "batch_confidence",
    "check_inputs",
    "confidence_change",
    "confidence_values",
    "curve",
    "deletion",
    "insertion",
    "step_size",
    "target_classes",
    "tuned_plan",
]


def check_inputs(images: torch.Tensor, maps: torch.Tensor) -> None:
    """Check that images ``(B, C, H, W)`` and maps ``(B, H, W)`` fit; raise InputError."""
    if images.ndim != 4 or maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise InputError(
            f"metrics need images (B, C, H, W) and maps (B, H, W), got {tuple(images.shape)} "
            f"and {tuple(maps.shape)}"
        )
    if maps.shape[-2:] != images.shape[-2:]:
        raise InputError("maps must have the input's size: explain with upsample=True")
    if not torch.isfinite(maps).all():
        raise InputError("maps contain NaN or infinite values")


@torch.inference_mode()
def _probs(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, images_per_pass: int
) -> torch.Tensor:
    out, model = [], logits_model(model)
    for start in range(0, x.shape[0], images_per_pass):
        chunk = slice(start, start + images_per_pass)
        logits = model(x[chunk])
        out.append(probabilities(model, logits).gather(1, classes[chunk, None])[:, 0])
    return torch.cat(out)


def target_classes(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int | None
) -> torch.Tensor:
    """The class per sample: top-1 for ``None``, else the given, range-checked, indices."""
    if targets is None:
        return predict(model, images)
    with model_guard(model), torch.inference_mode():
        output = logits_model(model)(images[:1])
    given = [targets] * images.shape[0] if isinstance(targets, int) else targets
    idx = torch.as_tensor(given, dtype=torch.long).reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(images.shape[0])
    checked = class_indices(idx.clone(), output.expand(images.shape[0], *output.shape[1:]))
    assert checked is not None
    return checked.clone().to(images.device)


def confidence_change(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | int | None = None,
    *,
    preprocess: Preprocess | None = None,
    images_per_pass: int = 32,
    output_transform: OutputTransform | None = None,
) -> dict[str, torch.Tensor]:
    r"""Average Drop, Increase in Confidence and Average Gain, per sample (in %).

    Chattopadhyay et al., https://arxiv.org/abs/1710.11063 (AD, IC); Zhang et al.,
    https://arxiv.org/abs/2301.07002 (AG). With ``E = x ⊙ L`` (in pixel space when a
    ``preprocess`` is given), ``Y = p_c(x)``, ``O = p_c(E)``:

    - ``average_drop = 100 · max(0, Y − O) / Y`` (lower is better),
    - ``increase_in_confidence = 100 · 1[O > Y]`` (higher is better),
    - ``average_gain = 100 · max(0, O − Y) / (1 − Y)`` (higher is better).

    ``images_per_pass`` images (and as many explanation images) go through the model
    per forward pass.

    Returns:
        ``{"average_drop", "increase_in_confidence", "average_gain"}`` -> ``(B,)`` tensors.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> x = torch.rand(2, 3, 2, 2)
        >>> confidence_change(net, x, torch.ones(2, 2, 2))["average_drop"].tolist()
        [0.0, 0.0]
    """
    check_inputs(images, maps)
    per_pass = check_inputs_per_pass(images_per_pass, "images_per_pass", InputError, auto=False)
    model = logits_model(model, output_transform)
    with model_guard(model):
        classes = target_classes(model, images, targets)
        return confidence_values(model, images, maps, classes, preprocess, int(per_pass))


def explanation_images(
    images: torch.Tensor, maps: torch.Tensor, preprocess: Preprocess | None
) -> torch.Tensor:
    """``E = x ⊙ L``: in pixel space when a ``preprocess`` is given (the Average Drop masks).

    A map of ones gives the images themselves, bit for bit
    (:meth:`~sacam.preprocess.Preprocess.multiply_pixels`).
    """
    m = maps[:, None].to(images.dtype)
    if preprocess is None:
        return images * m
    return preprocess.multiply_pixels(images, m)


def confidence_values(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    preprocess: Preprocess | None,
    images_per_pass: int,
) -> dict[str, torch.Tensor]:
    """:func:`confidence_change` for checked inputs and resolved ``(B,)`` classes."""
    with model_guard(model):
        y = _probs(model, images, classes, images_per_pass)
        o = _probs(model, explanation_images(images, maps, preprocess), classes, images_per_pass)
    drop = 100.0 * (y - o).clamp_min(0) / y.clamp_min(1e-12)
    increase = 100.0 * (o > y).float()
    gain = 100.0 * (o - y).clamp_min(0) / (1 - y).clamp_min(1e-12)
    return {"average_drop": drop, "increase_in_confidence": increase, "average_gain": gain}


def step_size(h: int, w: int, steps: int | None) -> int:
    """Pixels per deletion/insertion step: the image width for None, else ``ceil(HW / steps)``."""
    if steps is None:
        return w  # 224 pixels for 224×224 inputs: n = 224
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    return math.ceil(h * w / steps)


def deletion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | int | None = None,
    *,
    steps: int | None = None,
    inputs_per_pass: int | Literal["auto"] = "auto",
    seed: int = 0,
    output_transform: OutputTransform | None = None,
) -> CurveResult:
    """Deletion AUC (Petsiuk et al., RISE, https://arxiv.org/abs/1806.07421); lower is better.

    Pixels are removed in decreasing saliency (all channels at once), ``step`` per
    iteration, replaced by zeros of the normalised tensor (the dataset mean); the
    probability of the class (softmax, or sigmoid for multi-label outputs) at each of the
    ``n + 1`` points is integrated by the trapezoid rule over [0, 1]. Default step: the
    image width (224 pixels for 224×224, n = 224); ``steps=n`` trades precision for speed.
    The perturbed images go through the model ``inputs_per_pass`` at a time (``"auto"``:
    the size and memory format the curves' first passes measure fastest).
    """
    check_inputs(images, maps)
    model = logits_model(model, output_transform)
    classes = target_classes(model, images, targets)
    step = step_size(images.shape[-2], images.shape[-1], steps)
    zeros = torch.zeros_like(images)
    return curve(model, images, zeros, maps, classes, step, inputs_per_pass, seed)


def insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | int | None = None,
    *,
    steps: int | None = None,
    inputs_per_pass: int | Literal["auto"] = "auto",
    seed: int = 0,
    output_transform: OutputTransform | None = None,
) -> CurveResult:
    """Insertion AUC (Petsiuk et al., RISE); higher is better.

    Starts from the image blurred with a Gaussian (kernel 11, sigma 5, reflect padding)
    and puts original pixels back in decreasing saliency; otherwise as :func:`deletion`.
    """
    check_inputs(images, maps)
    model = logits_model(model, output_transform)
    classes = target_classes(model, images, targets)
    step = step_size(images.shape[-2], images.shape[-1], steps)
    return curve(
        model, gaussian_blur(images, 11, 5.0), images, maps, classes, step, inputs_per_pass, seed
    )


@register_metric(
    "confidence",
    values=[
        ("average_drop", False, "Average Drop %"),
        ("increase_in_confidence", True, "Increase in Confidence %"),
        ("average_gain", True, "Average Gain %"),
    ],
    source="Chattopadhyay et al. 1710.11063; Zhang et al. 2301.07002",
    default=True,
)
def _confidence(batch: MetricBatch) -> MetricOutput:
    return MetricOutput(dict(batch_confidence(batch)))


def batch_confidence(batch: MetricBatch) -> dict[str, torch.Tensor]:
    """:func:`confidence_values` of a metric batch, computed once per batch (ADCC shares it)."""
    b = batch
    return b.memo(
        "confidence",
        lambda: confidence_values(b.model, b.images, b.maps, b.classes, b.preprocess, b.size),
    )


def _curve_metric(batch: MetricBatch, kind: str) -> MetricOutput:
    b = batch
    step = step_size(b.images.shape[-2], b.images.shape[-1], b.config.steps)
    if kind == "deletion":
        start, finish = b.images, torch.zeros_like(b.images)
    else:
        start, finish = gaussian_blur(b.images, 11, 5.0), b.images
    seed = b.config.seed
    rank = b.memo("curve_rank", lambda: pixel_rank(b.maps, seed))
    res = curve(
        b.model, start, finish, b.maps, b.classes, step, b.config.curve_inputs_per_pass, seed, rank
    )
    return MetricOutput({kind: res.auc}, {kind: res.curves})


@register_metric(
    "deletion",
    values=[("deletion", False, "Deletion AUC")],
    source="Petsiuk et al. 1806.07421 (RISE)",
    default=True,
)
def _deletion(batch: MetricBatch) -> MetricOutput:
    return _curve_metric(batch, "deletion")


@register_metric(
    "insertion",
    values=[("insertion", True, "Insertion AUC")],
    source="Petsiuk et al. 1806.07421 (RISE)",
    default=True,
)
def _insertion(batch: MetricBatch) -> MetricOutput:
    return _curve_metric(batch, "insertion")
