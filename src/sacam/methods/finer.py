"""Finer-CAM (Zhang et al., CVPR 2025): explain what tells a class from its look-alikes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from ..core import BaseCAM
from ..errors import MethodError, TargetError
from ..explanation import CallContext
from ..registry import register_method
from ..targets import TargetsLike, class_indices
from ._options import base_method

__all__ = ["FinerCAM", "FinerTarget"]


@dataclasses.dataclass(frozen=True)
class FinerTarget:
    r"""Finer-CAM's score: the class logit minus its look-alikes', probability-weighted.

    .. math:: s = \frac{\sum_j p_j\,(y_c - α\, y_j)}{\sum_j p_j}
              = \sum_j \mathrm{softmax}_J(y)_j\,(y_c - α\, y_j)

    over the classes ``j ∈ J`` (``similar``); ``p`` is the softmax over all classes, and
    ``p_j / Σ_J p`` equals the softmax restricted to ``J``, computed that way so that no
    probability underflows to a 0/0. Maps a ``(n, C)`` output to ``(n,)`` scores.

    Example:
        >>> t = FinerTarget(0, (1, 2), 1.0)
        >>> y = torch.tensor([[3.0, 1.0, 1.0]])  # equal weights 1/2: (3 - 1 + 3 - 1) / 2
        >>> t(y).tolist()
        [2.0]
    """

    category: int
    similar: tuple[int, ...]
    alpha: float

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """The weighted logit differences of each row."""
        others = output[:, list(self.similar)]
        weights = torch.softmax(others, dim=1)
        main = output[:, self.category : self.category + 1]
        return (weights * (main - self.alpha * others)).sum(dim=1)


@register_method(
    "finer-cam",
    paper="Zhang et al., CVPR 2025",
    url="https://arxiv.org/abs/2501.11309",
    description="A base CAM (Grad-CAM) of the class logit minus its most similar classes' "
    "logits, so the map shows what tells the class from its look-alikes.",
    family="gradient",
)
class FinerCAM(BaseCAM):
    r"""Finer-CAM (Zhang et al., CVPR 2025, https://arxiv.org/abs/2501.11309).

    For target class ``c`` with logit ``y_c``, the ``n_similar`` (3) other classes whose
    logits are closest to ``y_c`` (smallest ``|y_j - y_c|``, ties to the lower index)
    form ``J``, and the ``base`` method (``"grad-cam"`` by default) explains the score

    .. math:: s = \frac{\sum_{j∈J} p_j\,(y_c - α\,y_j)}{\sum_{j∈J} p_j},\qquad
              p = \mathrm{softmax}(y),\ α = 1

    (:class:`FinerTarget`; gradients flow through the weights ``p_j`` too; the paper
    calls ``α`` the comparison strength ``γ``). With ``α = 0`` it is the base method on
    ``y_c``. Same as pytorch-grad-cam 1.5.7's
    ``FinerCAM`` (which adds ``1e-9`` to the denominator); torchcam 0.5.0 has none.

    Options: ``base`` (any registered method that accepts callable targets),
    ``base_options`` (a dict for it), ``alpha``, ``n_similar`` (cut to the number of other
    classes). Targets are class indices (``None`` = top-1), not callables. The
    :class:`~sacam.explanation.Explanation` reports the class ``c`` and its probability, the
    Finer-CAM score as ``scores``, and the compared classes ``J`` in
    ``extras["finer_similar"]`` (``(B, n)``). Cost: one forward pass for the logits, then
    the base method's.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn(classes=5)
        >>> out = sacam.explain_full(net, torch.rand(2, 3, 16, 16), method="finer-cam")
        >>> out.maps.shape, out.extras["finer_similar"].shape
        (torch.Size([2, 16, 16]), torch.Size([2, 3]))
    """

    volumes = True  # 5-D inputs when its base method takes them

    def __init__(
        self,
        *args: Any,
        base: str = "grad-cam",
        base_options: Mapping[str, Any] | None = None,
        alpha: float = 1.0,
        n_similar: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.base = base_method(self, "finer-cam", base, base_options)
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not math.isfinite(alpha)
        ):
            raise MethodError(f"finer-cam's alpha must be a finite number, got {alpha!r}")
        if isinstance(n_similar, bool) or not isinstance(n_similar, int) or n_similar < 1:
            raise MethodError(f"n_similar must be a positive int, got {n_similar!r}")
        self.alpha = float(alpha)
        self.n_similar = n_similar

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """Its base method's rows."""
        return self.base.expected_rows(shape, image_size)

    def similar_classes(self, output: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """The ``n_similar`` classes with logits closest to each sample's class, ``(B, n)``."""
        if output.ndim != 2:
            raise TargetError(
                f"finer-cam compares class logits, so the model output must be (B, classes); "
                f"got shape {tuple(output.shape)}"
            )
        n_classes = output.shape[1]
        if n_classes < 2:
            raise TargetError("finer-cam compares the class with others: the model has one class")
        main = output.gather(1, class_idx[:, None])
        gap = (output - main).abs()
        gap.scatter_(1, class_idx[:, None], float("inf"))  # never the class itself
        order = torch.sort(gap, dim=1, stable=True).indices
        return order[:, : min(self.n_similar, n_classes - 1)]

    def check_input(self, images: object) -> torch.Tensor:
        """Its base method's input check (5-D inputs when the base takes them)."""
        return self.base.check_input(images)

    def raw_maps(
        self, images: torch.Tensor, targets: TargetsLike, keep: bool = False
    ) -> tuple[CallContext, dict[str, torch.Tensor]]:
        """The base method's raw maps of the Finer-CAM score (see the class doc)."""
        with torch.inference_mode():
            output = self.logits_model(images)
            idx = class_indices(targets, output)
            if idx is None:
                raise TargetError(
                    "finer-cam compares class logits: pass class indices (or None for the "
                    "top-1 class), not callables"
                )
            similar = self.similar_classes(output, idx)
        output, idx, similar = output.clone(), idx.clone(), similar.clone()
        fins = [
            FinerTarget(int(c), tuple(int(j) for j in row), self.alpha)
            for c, row in zip(idx.tolist(), similar.tolist(), strict=True)
        ]
        ctx, raw = self.base.raw_maps(images, fins, keep)
        # the class and its probability on the clean logits; the Finer-CAM score as scores
        ctx = dataclasses.replace(ctx, output=output, class_idx=idx)
        ctx.extras["finer_similar"] = similar
        return ctx, raw

    def fusion_size(self, raw: dict[str, torch.Tensor], size: tuple[int, ...]) -> tuple[int, ...]:
        """Its base method's."""
        return self.base.fusion_size(raw, size)

    def fuse(
        self, layer_maps: dict[str, torch.Tensor], raw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Its base method's."""
        return self.base.fuse(layer_maps, raw)
