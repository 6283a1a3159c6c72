"""Faithfulness metrics of saliency maps (the protocols of docs/evaluation.md).

Each metric is a plain function returning per-sample values, plus an accumulator
(``update`` / ``compute`` / ``reset``) that knows whether higher is better. Implemented
so far: Average Drop, Increase in Confidence and Average Gain (one function, three
values), and Deletion / Insertion.

Conventions (from the evaluation protocols):

- the class is each sample's top-1 on the clean image unless ``targets`` are given;
- scores are softmax probabilities;
- maps are ``(B, H, W)`` in [0, 1] at the input size (as :func:`sacam.explain` returns);
- where a metric masks in pixel space it needs the model's ``Preprocess`` (to go from
  the normalised tensor to [0, 1] pixels and back); without one it multiplies the
  normalised tensor, which moves pixels towards the dataset mean, and says so in its
  docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ._layers import probe
from ._tuning import Plan, measure_plan, memory_cap
from .core import model_guard, predict
from .errors import InputError
from .filters import gaussian_blur
from .models import Preprocess
from .targets import class_indices


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
    out = []
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
        output = model(images[:1])
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
    with model_guard(model):
        classes = target_classes(model, images, targets)
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


def _curve(
    model: nn.Module,
    start: torch.Tensor,
    finish: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    step: int,
    batch_size: int | Literal["auto"],
    seed: int,
) -> CurveResult:
    b_count, _, h, w = start.shape
    n = math.ceil(h * w / step)
    rank = _rank(maps, seed)
    thresholds = torch.arange(n + 1, device=start.device) * step  # pixels switched at point t
    curves = torch.empty(b_count, n + 1)
    with model_guard(model):
        plan = _plan(model, start, batch_size)
        fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
        with torch.inference_mode():
            for b in range(b_count):
                for lo in range(0, n + 1, plan.batch_size):
                    th = thresholds[lo : lo + plan.batch_size]
                    switched = (rank[b][None] < th[:, None]).view(-1, 1, h, w)
                    x = torch.where(switched, finish[b][None], start[b][None])
                    logits = model(x.contiguous(memory_format=fmt))
                    probs = torch.softmax(logits.float(), 1)[:, classes[b]]
                    curves[b, lo : lo + th.shape[0]] = probs.cpu()
    xs = (thresholds.clamp(max=h * w) / (h * w)).double().cpu()  # the last step may be partial
    auc = torch.trapezoid(curves.double(), xs, dim=1).float()
    return CurveResult(auc=auc, curves=curves, step=step)


def _plan(model: nn.Module, images: torch.Tensor, batch_size: int | Literal["auto"]) -> Plan:
    """Batch size and memory format of the perturbed passes (measured for ``"auto"``)."""
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    if batch_size != "auto":
        return Plan(int(batch_size), False)
    cap = memory_cap(probe(model, images[:1]), tuple(images.shape[1:]), 1024.0)
    return measure_plan(model, images[0], cap)


def _step(h: int, w: int, steps: int | None) -> int:
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
    classes = target_classes(model, images, targets)
    step = _step(images.shape[-2], images.shape[-1], steps)
    return _curve(model, images, torch.zeros_like(images), maps, classes, step, batch_size, seed)


def insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | int | None = None,
    *,
    steps: int | None = None,
    batch_size: int | Literal["auto"] = "auto",
    seed: int = 0,
) -> CurveResult:
    """Insertion AUC (Petsiuk et al., RISE); higher is better.

    Starts from the image blurred with a Gaussian (kernel 11, sigma 5, reflect padding)
    and puts original pixels back in decreasing saliency; otherwise as :func:`deletion`.
    """
    check_inputs(images, maps)
    classes = target_classes(model, images, targets)
    step = _step(images.shape[-2], images.shape[-1], steps)
    return _curve(
        model, gaussian_blur(images, 11, 5.0), images, maps, classes, step, batch_size, seed
    )


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Sparsity: Gini index of each map (0 = uniform, → 1 = one pixel); NaN for all-zero."""
    x = maps.flatten(1).double().clamp_min(0).sort(1).values
    n = x.shape[1]
    total = x.sum(1)
    i = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    g = ((2 * i - n - 1) * x).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.full_like(g, float("nan"))).float()


def entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each map as a distribution over pixels; NaN for all-zero."""
    x = maps.flatten(1).double().clamp_min(0)
    total = x.sum(1, keepdim=True)
    p = x / total.clamp_min(1e-300)
    h = -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, float("nan"))).float()


@dataclass
class MetricInfo:
    """A registered metric: its name, direction and per-sample function."""

    name: str
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricInfo] = {
    "average_drop": MetricInfo("average_drop", False, "Average Drop, % (Chattopadhyay et al.)"),
    "increase_in_confidence": MetricInfo(
        "increase_in_confidence", True, "Increase in Confidence, % (Chattopadhyay et al.)"
    ),
    "average_gain": MetricInfo("average_gain", True, "Average Gain, % (Zhang et al.)"),
    "deletion": MetricInfo("deletion", False, "Deletion AUC (Petsiuk et al.)"),
    "insertion": MetricInfo("insertion", True, "Insertion AUC (Petsiuk et al.)"),
}


@dataclass
class MeanAccumulator:
    """Accumulates per-sample values of one metric: mean and 95% interval.

    Example:
        >>> acc = MeanAccumulator("deletion")
        >>> acc.update(torch.tensor([0.1, 0.3]))
        >>> round(acc.compute()["mean"], 3), acc.higher_is_better
        (0.2, False)
    """

    metric: str
    values: list[float] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        """Direction of the metric."""
        return METRICS[self.metric].higher_is_better

    def update(self, values: torch.Tensor) -> None:
        """Add per-sample values (NaNs are counted, not averaged in)."""
        self.values.extend(float(v) for v in values.flatten().tolist())

    def reset(self) -> None:
        """Forget all values."""
        self.values.clear()

    def compute(self) -> dict[str, float]:
        """``mean``, ``ci95`` (half-width, normal approximation), ``n`` and ``nan_count``."""
        return mean_ci(self.values)


def mean_ci(values: list[float]) -> dict[str, float]:
    """Mean and 95% interval half-width (normal approximation) of the finite values.

    Non-finite values are counted in ``nan_count``, not averaged in.

    Example:
        >>> mean_ci([1.0, 3.0, float("nan")])["mean"], mean_ci([1.0, 3.0])["nan_count"]
        (2.0, 0.0)
    """
    vals = [v for v in values if math.isfinite(v)]
    n = len(vals)
    mean = sum(vals) / n if n else float("nan")
    var = sum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
    return {
        "mean": mean,
        "ci95": 1.96 * math.sqrt(var / n) if n else float("nan"),
        "n": float(n),
        "nan_count": float(len(values) - n),
    }
