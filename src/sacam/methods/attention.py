"""SA-CAM: the self-attention class activation map (Liang, Li & Jiang, 2022).

sacam's formulation is a reconstruction from the paper's abstract (its full text is not
available to us); every choice the abstract leaves open is a parameter. See
``docs/sa-cam.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..core import BaseCAM
from ..errors import InputError, MethodError
from ..explanation import CallContext, LayerData
from ..registry import get_method, list_methods, register_method
from ._options import base_method, check_count, check_number

Operator = Literal["cosine", "dot", "class"]
BASE_ALIASES = {"score": "score-cam", "grad": "grad-cam", "gradpp": "grad-cam++"}


def self_attention(
    features: torch.Tensor,
    operator: Operator = "cosine",
    temperature: float = 10.0,
    channel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Parameter-free spatial self-attention: row-softmax of position similarities.

    Args:
        features: ``F``, shape ``(B, K, N)``: the feature vector ``f_i`` of each position.
        operator: ``"cosine"``: :math:`s_{ij} = \tau \cos(f_i, f_j)`; ``"dot"``:
            :math:`s_{ij} = f_i \cdot f_j / \sqrt{K}`; ``"class"``:
            :math:`s_{ij} = \tau \cos(w \odot f_i, w \odot f_j)` with ``w`` the class's
            channel weights (similarity in the channels that carry evidence for the class).
        temperature: ``τ`` of the cosine and class operators.
        channel_weights: ``w``, shape ``(B, K)``, needed by ``"class"``.

    Returns:
        ``S``, shape ``(B, N, N)``; each row sums to 1. A position whose feature vector is
        zero has cosine 0 with every position.

    Example:
        >>> import torch
        >>> S = self_attention(torch.tensor([[[1.0, 1.0], [0.0, 1.0]]]), "cosine", 1.0)
        >>> bool(S.sum(-1).allclose(torch.ones(1, 2)))
        True
    """
    f = features
    if operator == "class":
        if channel_weights is None:
            raise MethodError("the 'class' operator needs channel weights")
        f = f * channel_weights[:, :, None].to(f.dtype)
    if operator in ("cosine", "class"):
        norm = f.norm(dim=1, keepdim=True)
        unit = f / torch.where(norm > 0, norm, torch.ones_like(norm))
        logits = temperature * torch.bmm(unit.transpose(1, 2), unit)
    elif operator == "dot":
        logits = torch.bmm(f.transpose(1, 2), f) / math.sqrt(f.shape[1])
    else:
        raise MethodError(f"operator must be 'cosine', 'dot' or 'class', got {operator!r}")
    return torch.softmax(logits, dim=-1)


def attend(features: torch.Tensor, attention: torch.Tensor, hops: int = 1) -> torch.Tensor:
    r"""Attended features ``O = F (S^t)^T``: :math:`O^k_i = \sum_j (S^t)_{ij} A^k_j`.

    Args:
        features: ``(B, K, N)``.
        attention: ``S``, ``(B, N, N)``.
        hops: ``t ≥ 1``, applications of ``S``.

    Returns:
        ``(B, K, N)``.
    """
    out = features
    for _ in range(hops):
        out = torch.bmm(out, attention.transpose(1, 2))
    return out


@dataclass
class SALayerInspection:
    """What SA-CAM's attention branch did at one layer (see ``Explanation.extras``).

    Attributes:
        attention: ``S``, ``(B, N, N)``, rows sum to 1 (before the ``hops`` power).
        activations: ``A``, ``(B, K, h, w)``.
        refined: ``Ã = A + γ O``, ``(B, K, h, w)``.
        weights: the channel weights used for the map, ``(B, K)``.
        hops: ``t``.
    """

    attention: torch.Tensor
    activations: torch.Tensor
    refined: torch.Tensor
    weights: torch.Tensor
    hops: int

    def attention_row(self, sample: int, row: int, col: int) -> torch.Tensor:
        """Attention of position ``(row, col)`` over the layer grid, ``(h, w)`` (``S^t``)."""
        h, w = self.activations.shape[-2:]
        if not (0 <= row < h and 0 <= col < w):
            raise MethodError(f"position ({row}, {col}) is outside the {h}×{w} layer grid")
        s = torch.linalg.matrix_power(self.attention[sample], self.hops)
        return s[row * w + col].reshape(h, w)


@register_method(
    "sa-cam",
    paper="Liang, Li & Jiang, Neurocomputing 2022",
    url="https://doi.org/10.1016/j.neucom.2021.11.084",
    description=(
        "A base CAM refined by a parameter-free self-attention branch added to each "
        "feature map as a skip connection (reconstructed from the abstract)."
    ),
    family="attention",
)
class SACAM(BaseCAM):
    r"""SA-CAM, the self-attention CAM.

    Liang, Li & Jiang, Neurocomputing 490 (2022) 206-216,
    https://doi.org/10.1016/j.neucom.2021.11.084.

    sacam's SA-CAM is a reconstruction from the paper's abstract, whose full text is not
    available to us: every choice the abstract leaves open is a parameter.

    1. Basic activation maps ``A`` (``K`` channels, ``N = h·w`` positions) from one pass.
    2. Attention branch: ``S = rowsoftmax(s)``, ``s`` by ``operator`` (see
       :func:`self_attention`), applied ``hops`` times: ``O = F (S^t)^T``.
    3. Attention skip connection, a regularisation item for each feature map:
       ``Ã^k = A^k + γ O^k`` (``gamma``). With ``γ = 0`` SA-CAM is exactly its base.
    4. Channel weights ``w^c_k`` of the ``base`` method computed on the refined maps
       (``"grad"`` = Grad-CAM, ``"gradpp"`` = Grad-CAM++, ``"score"`` = Score-CAM, or any
       registered method name that produces channel weights; ``base_options`` go to it).
       For ``operator="class"`` the base weights on ``A`` define the similarity first.
    5. ``L^c = ReLU(Σ_k w^c_k Ã^k)``, upsampled and min-max normalised by the engine.

    Inspection: ``sacam.explain_full(...).extras["sa-cam"][layer]`` is a
    :class:`SALayerInspection` with ``S``, ``A``, ``Ã`` and the weights;
    ``sacam.viz.save_attention`` draws one position's attention row.

    Cost: the base method plus an ``N×N`` attention per image (49×49 at 7×7), batched
    with ``torch.bmm``.

    5-D inputs ``(B, C, T, H, W)``: the positions are the layer's ``t·h·w`` cells (one
    attention over space and time), when the base method takes 5-D inputs (Grad-CAM and
    Grad-CAM++ do, Score-CAM does not); ``attention_row`` is for 2-D layers only.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(1, 3, 16, 16), method="sa-cam", gamma=1.0).shape
        torch.Size([1, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        operator: Operator = "class",
        temperature: float = 10.0,
        gamma: float = 2.0,
        hops: int = 2,
        base: str = "grad",
        base_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if operator not in ("cosine", "dot", "class"):
            raise MethodError(f"operator must be 'cosine', 'dot' or 'class', got {operator!r}")
        check_number("gamma", gamma, minimum=0)
        check_number("temperature", temperature, above=0)
        check_count("hops", hops)
        base_name = BASE_ALIASES.get(base, base)
        if base_name == "sa-cam" or base_name not in list_methods():
            valid = ", ".join([*BASE_ALIASES, *(m for m in list_methods() if m != "sa-cam")])
            raise MethodError(f"unknown SA-CAM base {base!r}; valid bases: {valid}")
        if get_method(base_name).weights is BaseCAM.weights:
            raise MethodError(
                f"SA-CAM's base must produce channel weights; {base_name!r} builds its map "
                "another way"
            )
        self.base = base_method(self, "sa-cam", base_name, base_options)
        self.base_name = base_name
        # one pass serves both: the engine reads what the base's weights need
        self.uses_gradients = self.base.uses_gradients  # type: ignore[misc]
        self.second_order = self.base.second_order  # type: ignore[misc]
        self.operator: Operator = operator
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.hops = hops

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """Its base method's rows."""
        return self.base.expected_rows(shape, image_size)

    def supports_graph(self) -> bool:
        """Differentiable when its base is (attention and skip connection are torch ops)."""
        return self.base.supports_graph()

    volumes = True  # when the base takes them (check_input)

    def check_input(self, images: object) -> torch.Tensor:
        """The engine's input check; 5-D inputs only with a base method that takes them."""
        if isinstance(images, torch.Tensor) and images.ndim == 5:
            if not self.base.accepts_volumes():
                raise InputError(
                    f"sa-cam's base {self.base_name!r} explains 4-D images only, got 5-D input "
                    f"{tuple(images.shape)}: use base='grad' or 'gradpp' for 5-D inputs"
                )
        return super().check_input(images)

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """The SA-CAM map of one layer (raw, before ReLU and normalisation)."""
        acts = layer.activations
        feats = acts.flatten(2)
        base_w = self.base.weights(layer, ctx) if self.operator == "class" else None
        attention = self_attention(feats, self.operator, self.temperature, base_w)
        refined = (feats + self.gamma * attend(feats, attention, self.hops)).view(acts.shape)
        refined_layer = LayerData(layer.ref, refined, layer.gradients, layer.hvp)
        if base_w is not None and self.gamma == 0:
            weights = base_w
        else:
            weights = self.base.weights(refined_layer, ctx)
        ctx.extras.setdefault("sa-cam", {})[layer.ref.label] = SALayerInspection(
            attention=attention, activations=acts, refined=refined, weights=weights, hops=self.hops
        )
        spec = "bk,bkhw->bhw" if refined.ndim == 4 else "bk,bk...->b..."
        return torch.einsum(spec, weights.to(refined.dtype), refined)
