"""Faithfulness metrics: Average Drop / Increase / Gain and Deletion / Insertion.

Each metric is a plain function returning per-sample values (the protocols of
docs/evaluation.md); the registered metric functions at the end of the file adapt them
to the runner. ROAD lives in :mod:`sacam.evaluation.road`.

Conventions (from the evaluation protocols):

- the class is each sample's top-1 on the clean image unless ``targets`` are given;
- scores are softmax probabilities;
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
import time
import weakref
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .._layers import probe
from .._outputs import OutputTransform, logits_model, unwrap
from .._tuning import CANDIDATE_BATCHES, Plan, memory_cap
from ..core import model_guard, predict
from ..errors import InputError
from ..filters import gaussian_blur
from ..models import Preprocess
from ..targets import class_indices
from .registry import MetricBatch, MetricOutput, register_metric


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
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, batch_size: int
) -> torch.Tensor:
    out, model = [], logits_model(model)
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size])
        out.append(
            torch.softmax(logits.float(), 1).gather(1, classes[start : start + batch_size, None])[
                :, 0
            ]
        )
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
    batch_size: int = 32,
    output_transform: OutputTransform | None = None,
) -> dict[str, torch.Tensor]:
    r"""Average Drop, Increase in Confidence and Average Gain, per sample (in %).

    Chattopadhyay et al., https://arxiv.org/abs/1710.11063 (AD, IC); Zhang et al.,
    https://arxiv.org/abs/2301.07002 (AG). With ``E = x ⊙ L`` (in pixel space when a
    ``preprocess`` is given), ``Y = p_c(x)``, ``O = p_c(E)``:

    - ``average_drop = 100 · max(0, Y − O) / Y`` (lower is better),
    - ``increase_in_confidence = 100 · 1[O > Y]`` (higher is better),
    - ``average_gain = 100 · max(0, O − Y) / (1 − Y)`` (higher is better).

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
    model = logits_model(model, output_transform)
    with model_guard(model):
        classes = target_classes(model, images, targets)
        return confidence_values(model, images, maps, classes, preprocess, batch_size)


def confidence_values(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    preprocess: Preprocess | None,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """:func:`confidence_change` for checked inputs and resolved ``(B,)`` classes."""
    with model_guard(model):
        y = _probs(model, images, classes, batch_size)
        m = maps[:, None].to(images.dtype)
        if preprocess is not None:
            explained = preprocess.normalize(preprocess.denormalize(images) * m)
        else:
            explained = images * m
        o = _probs(model, explained, classes, batch_size)
    drop = 100.0 * (y - o).clamp_min(0) / y.clamp_min(1e-12)
    increase = 100.0 * (o > y).float()
    gain = 100.0 * (o - y).clamp_min(0) / (1 - y).clamp_min(1e-12)
    return {"average_drop": drop, "increase_in_confidence": increase, "average_gain": gain}


@dataclass
class CurveResult:
    """Per-sample AUCs of a deletion or insertion curve, and the curves themselves."""

    auc: torch.Tensor  # (B,)
    curves: torch.Tensor  # (B, n + 1)
    step: int


def _rank(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """Rank of each pixel by decreasing saliency (0 = most salient); seeded tiny jitter."""
    flat = maps.flatten(1).double()
    g = torch.Generator(device="cpu").manual_seed(seed)
    jitter = torch.rand(flat.shape, generator=g, dtype=torch.float64).to(flat.device) * 1e-9
    order = torch.argsort(flat + jitter, dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


def curve(
    model: nn.Module,
    start: torch.Tensor,
    finish: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    step: int,
    batch_size: int | Literal["auto"] = "auto",
    seed: int = 0,
) -> CurveResult:
    """Probability of each class as pixels switch from ``start`` to ``finish`` by rank.

    Every image's ``n + 1`` perturbation points go through the model together, in
    forward passes of ``batch_size`` perturbed images drawn across images, and the
    probabilities stay on the device (no host sync per pass but while tuning).

    Args:
        model: the classifier.
        start: ``(B, C, H, W)`` images at point 0.
        finish: ``(B, C, H, W)`` images once every pixel is switched.
        maps: ``(B, H, W)`` saliency; pixels switch in decreasing saliency.
        classes: ``(B,)`` class per image.
        step: pixels switched per point.
        batch_size: perturbed images per forward pass, or ``"auto"`` (tuned on the curves'
            own first chunks, then cached; see :class:`_Tuner`).
        seed: seed of the tie-breaking jitter.
    """
    b_count, _, h, w = start.shape
    points = math.ceil(h * w / step) + 1
    rank = _rank(maps, seed)
    device = start.device
    thresholds = torch.arange(points, device=device) * step  # pixels switched at point t
    classes = classes.to(device)
    total = b_count * points
    probs, model = torch.empty(total, device=device), logits_model(model)
    with model_guard(model):
        tuner = _tuner(model, start, batch_size)
        lo = 0
        with torch.inference_mode():
            while lo < total:
                plan, timed = tuner.next(total - lo)
                hi = min(lo + plan.batch_size, total)
                t0 = _sync(device) if timed else 0.0
                idx = torch.arange(lo, hi, device=device)
                img, point = idx // points, idx % points
                switched = (rank[img] < thresholds[point, None]).view(-1, 1, h, w)
                x = torch.where(switched, finish[img], start[img])
                fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
                logits = model(x.contiguous(memory_format=fmt))
                probs[lo:hi] = torch.softmax(logits.float(), 1).gather(1, classes[img, None])[:, 0]
                if timed and hi - lo == plan.batch_size:
                    tuner.record(plan, 1000 * (_sync(device) - t0) / (hi - lo))
                lo = hi
    curves = probs.view(b_count, points).cpu()
    xs = (thresholds.clamp(max=h * w) / (h * w)).double().cpu()  # the last step may be partial
    auc = torch.trapezoid(curves.double(), xs, dim=1).float()
    return CurveResult(auc=auc, curves=curves, step=step)


def _sync(device: torch.device) -> float:
    """Wait for the device's queued work; returns the time after it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class _Tuner:
    """Batch size and memory format of the curves' passes, chosen by timing real work.

    While tuning, each candidate (batch size ≤ the memory cap × contiguous or
    channels_last) runs two of the curves' own chunks, timed (the second timing counts:
    the first may include one-off setup); then the fastest is used, in equal chunks of at
    most its size. No forward pass is spent on measuring alone, and the state is cached
    per model, input shape, dtype and device.
    """

    candidates: tuple[Plan, ...]
    times: dict[Plan, list[float]] = field(default_factory=dict)

    def next(self, remaining: int) -> tuple[Plan, bool]:
        """The plan of the next chunk and whether to time it."""
        for plan in self.candidates:
            if len(self.times.get(plan, ())) < 2:
                return plan, True
        best = self.best()
        size = math.ceil(remaining / math.ceil(remaining / best.batch_size))
        return Plan(size, best.channels_last), False

    def record(self, plan: Plan, ms_per_image: float) -> None:
        """Add one timing of ``plan``."""
        self.times.setdefault(plan, []).append(ms_per_image)

    def best(self) -> Plan:
        """The fastest candidate timed so far (the first candidate before any timing)."""
        timed = [p for p in self.candidates if self.times.get(p)]
        if not timed:
            return self.candidates[0]
        return min(timed, key=lambda p: self.times[p][-1])


_TUNERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Tuner]] = weakref.WeakKeyDictionary()


def _tuner(model: nn.Module, images: torch.Tensor, batch_size: int | Literal["auto"]) -> _Tuner:
    """The (cached) tuner of ``model`` for these inputs; fixed for an int ``batch_size``."""
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    if batch_size != "auto":
        fixed = Plan(int(batch_size), False)
        return _Tuner((fixed,), {fixed: [0.0, 0.0]})
    key = (tuple(images.shape[1:]), images.dtype, str(images.device))
    tuners = _TUNERS.setdefault(unwrap(model), {})
    if key not in tuners:
        cap = memory_cap(probe(model, images[:1]), tuple(images.shape[1:]), 1024.0)
        sizes = sorted({min(b, cap) for b in CANDIDATE_BATCHES})
        tuners[key] = _Tuner(tuple(Plan(b, cl) for b in sizes for cl in (False, True)))
    return tuners[key]


def tuned_plan(model: nn.Module, images: torch.Tensor) -> Plan:
    """The curves' batch size and memory format for ``model`` and inputs like ``images``."""
    return _tuner(model, images, "auto").best()


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
    batch_size: int | Literal["auto"] = "auto",
    seed: int = 0,
    output_transform: OutputTransform | None = None,
) -> CurveResult:
    """Deletion AUC (Petsiuk et al., RISE, https://arxiv.org/abs/1806.07421); lower is better.

    Pixels are removed in decreasing saliency (all channels at once), ``step`` per
    iteration, replaced by zeros of the normalised tensor (the dataset mean); the softmax
    probability of the class at each of the ``n + 1`` points is integrated by the
    trapezoid rule over [0, 1]. Default step: the image width (224 pixels for 224×224,
    n = 224); ``steps=n`` trades precision for speed. The perturbed images are batched
    (``batch_size="auto"``: the batch size and memory format measured fastest).
    """
    check_inputs(images, maps)
    model = logits_model(model, output_transform)
    classes = target_classes(model, images, targets)
    step = step_size(images.shape[-2], images.shape[-1], steps)
    return curve(model, images, torch.zeros_like(images), maps, classes, step, batch_size, seed)


def insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | int | None = None,
    *,
    steps: int | None = None,
    batch_size: int | Literal["auto"] = "auto",
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
        model, gaussian_blur(images, 11, 5.0), images, maps, classes, step, batch_size, seed
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
    b = batch
    vals = confidence_values(b.model, b.images, b.maps, b.classes, b.preprocess, len(b.images))
    return MetricOutput(vals)


def _curve_metric(batch: MetricBatch, kind: str) -> MetricOutput:
    b = batch
    step = step_size(b.images.shape[-2], b.images.shape[-1], b.config.steps)
    if kind == "deletion":
        start, finish = b.images, torch.zeros_like(b.images)
    else:
        start, finish = gaussian_blur(b.images, 11, 5.0), b.images
    res = curve(
        b.model, start, finish, b.maps, b.classes, step, b.config.curve_batch_size, b.config.seed
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
