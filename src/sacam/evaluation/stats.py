"""Summary statistics of per-sample metric values: mean and 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from scipy.stats import t as student_t

from .registry import value_of


def mean_ci(values: list[float]) -> dict[str, float]:
    """Mean and 95% interval half-width (Student's t, n − 1 degrees of freedom).

    Non-finite values are counted in ``nan_count``, not averaged in. The half-width is
    NaN for fewer than two values (one value says nothing about the spread). Student's t,
    not the normal 1.96: at 10 images the normal interval is 13% too narrow, at 100 1%.

    Example:
        >>> mean_ci([1.0, 3.0, float("nan")])["mean"], mean_ci([1.0, 3.0])["nan_count"]
        (2.0, 0.0)
        >>> round(mean_ci([1.0, 2.0, 3.0])["ci95"], 3)  # t(0.975, 2) = 4.303, sd/√n = 1/√3
        2.484
    """
    vals = [v for v in values if math.isfinite(v)]
    n = len(vals)
    mean = sum(vals) / n if n else float("nan")
    var = sum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
    half = float(student_t.ppf(0.975, n - 1)) * math.sqrt(var / n) if n > 1 else float("nan")
    return {
        "mean": mean,
        "ci95": half,
        "n": float(n),
        "nan_count": float(len(values) - n),
    }


def format_mean_ci(stat: dict[str, float]) -> str:
    """``"mean ± half-width"`` to 3 decimals; the mean alone where there is no interval.

    Example:
        >>> format_mean_ci(mean_ci([1.0, 2.0, 3.0])), format_mean_ci(mean_ci([0.5]))
        ('2.000 ± 2.484', '0.500')
    """
    if math.isnan(stat["ci95"]):
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['ci95']:.3f}"


@dataclass
class MeanAccumulator:
    """Accumulates per-sample values of one metric value: mean and 95% interval.

    Example:
        >>> import sacam.evaluation
        >>> acc = MeanAccumulator("deletion")
        >>> acc.update(torch.tensor([0.1, 0.3]))
        >>> round(acc.compute()["mean"], 3), acc.higher_is_better
        (0.2, False)
    """

    metric: str
    values: list[float] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        """Direction of the metric value (from the metric registry)."""
        return value_of(self.metric).higher_is_better

    def update(self, values: torch.Tensor) -> None:
        """Add per-sample values (NaNs are counted, not averaged in)."""
        self.values.extend(float(v) for v in values.flatten().tolist())

    def reset(self) -> None:
        """Forget all values."""
        self.values.clear()

    def compute(self) -> dict[str, float]:
        """``mean``, ``ci95`` (half-width, Student's t), ``n`` and ``nan_count``."""
        return mean_ci(self.values)
