"""ROAD: RemOve And Debias (Rong et al., ICML 2022, https://arxiv.org/abs/2202.00449).

Removed pixels are filled by *noisy linear imputation*: every missing pixel is the
weighted mean of its 8 neighbours (1/6 for the 4 direct, 1/12 for the 4 diagonal
neighbours; at the border the weights of the neighbours that exist, renormalised), all
missing pixels solved jointly as one sparse linear system, then N(0, 0.01²) noise is added.
Imputation happens in pixel space ([0, 1] RGB).

At each percentage ``p``: MoRF removes the top ``p`` of pixels (lower score is
better); LeRF keeps the top ``p`` and removes the rest (higher is better), so the two
images of one ``p`` are complementary. This is sacam's evaluation protocol; the paper's
LeRF at ``p`` (remove the ``p`` least relevant) is this LeRF at ``1 − p``.
(pytorch-grad-cam's "percentile" is the fraction kept, not removed.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn

from .._hooks import model_guard
from .._outputs import OutputTransform, logits_model
from ..errors import InputError
from ..preprocess import Preprocess
from ..scores import class_probabilities
from .config import ROAD_PERCENTAGES
from .faithfulness import check_inputs, target_classes
from .registry import MetricBatch, MetricOutput, register_metric

PERCENTAGES = ROAD_PERCENTAGES
_NEIGHBOURS = [
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
]


def imputation_system(
    missing: np.ndarray,
) -> tuple[sp.csr_matrix, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The sparse system ``M x_missing = b`` of noisy linear imputation (without noise).

    Args:
        missing: ``(H, W)`` bool, True where a pixel is removed.

    Returns:
        ``(M, known_terms)``: ``M`` is ``(U, U)`` for the ``U`` missing pixels (in
        row-major order); ``known_terms`` lists ``(rows, flat_known_index, weight)``
        arrays to build ``b`` from a channel's known values.
    """
    h, w = missing.shape
    idx = -np.ones((h, w), dtype=np.int64)
    ys, xs = np.nonzero(missing)
    idx[ys, xs] = np.arange(len(ys))
    rows, cols, vals = [], [], []
    total = np.zeros(len(ys))
    known_terms = []
    for dy, dx, wt in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        total[inside] += wt
        r = np.nonzero(inside)[0]
        nyi, nxi = ny[inside], nx[inside]
        nb_missing = missing[nyi, nxi]
        rows.append(r[nb_missing])
        cols.append(idx[nyi[nb_missing], nxi[nb_missing]])
        vals.append(np.full(int(nb_missing.sum()), -wt))
        known = ~nb_missing
        known_terms.append((r[known], nyi[known] * w + nxi[known], np.full(int(known.sum()), wt)))
    n = len(ys)
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(total)
    m = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    return m, known_terms


def impute(
    pixels: torch.Tensor, missing: torch.Tensor, *, noise: float = 0.01, seed: int = 0
) -> torch.Tensor:
    """Noisy linear imputation of one image.

    Args:
        pixels: ``(C, H, W)`` in [0, 1].
        missing: ``(H, W)`` bool, True where the pixel is removed.
        noise: standard deviation of the Gaussian noise added to imputed pixels.
        seed: seed of that noise.

    Returns:
        ``(C, H, W)``: known pixels unchanged, missing ones imputed.
    """
    miss = missing.detach().cpu().numpy().astype(bool)
    img = pixels.detach().cpu().double().numpy()
    out = img.copy()
    if not miss.any():
        return pixels.clone()
    if miss.all():
        raise InputError("cannot impute an image with every pixel removed")
    m, known_terms = imputation_system(miss)
    solver = spla.factorized(m.tocsc())
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(miss)
    for c in range(img.shape[0]):
        flat = img[c].reshape(-1)
        b = np.zeros(m.shape[0])
        for rows, known_idx, wt in known_terms:
            np.add.at(b, rows, wt * flat[known_idx])
        sol = solver(b)
        if not np.all(np.isfinite(sol)):  # a missing region with no known border
            sol = np.nan_to_num(sol, nan=float(flat[~miss.reshape(-1)].mean()))
        out[c, ys, xs] = sol + rng.normal(0.0, noise, size=sol.shape)
    return torch.from_numpy(out).to(dtype=pixels.dtype, device=pixels.device)


@dataclass
class RoadResult:
    """ROAD curves of a batch: ``(B, P)`` scores at each percentage, MoRF and LeRF."""

    percentages: tuple[float, ...]
    morf: torch.Tensor
    lerf: torch.Tensor

    @property
    def morf_mean(self) -> torch.Tensor:
        """Mean MoRF score over percentages (lower is better)."""
        return self.morf.mean(1)

    @property
    def lerf_mean(self) -> torch.Tensor:
        """Mean LeRF score over percentages (higher is better)."""
        return self.lerf.mean(1)

    @property
    def gap(self) -> torch.Tensor:
        """Mean LeRF − MoRF gap (higher is better)."""
        return self.lerf_mean - self.morf_mean


def road(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    preprocess: Preprocess,
    targets: torch.Tensor | None = None,
    *,
    percentages: tuple[float, ...] = PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
    output_transform: OutputTransform | None = None,
) -> RoadResult:
    """ROAD MoRF and LeRF curves (the class's probability after imputation).

    Args:
        model: the classifier.
        images: ``(B, C, H, W)`` normalised model inputs.
        maps: ``(B, H, W)`` saliency in [0, 1].
        preprocess: the model's preprocessing (to impute in pixel space).
        targets: class per sample (default: top-1 on the clean image).
        percentages: fractions of pixels removed.
        noise: imputation noise standard deviation (pixel units).
        seed: noise and tie-break seed.
        output_transform: reads the model's output as logits (see :func:`sacam.explain`).

    Returns:
        a :class:`RoadResult`.
    """
    check_inputs(images, maps)
    model = logits_model(model, output_transform)
    classes = target_classes(model, images, targets)
    return road_curves(model, images, maps, preprocess, classes, percentages, noise, seed)


def road_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    preprocess: Preprocess,
    classes: torch.Tensor,
    percentages: tuple[float, ...] = PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
) -> RoadResult:
    """:func:`road` for checked inputs and resolved ``(B,)`` classes."""
    b_count, _, h, w = images.shape
    pixels = preprocess.denormalize(images)
    morf = torch.empty(b_count, len(percentages))
    lerf = torch.empty(b_count, len(percentages))
    g, model = torch.Generator().manual_seed(seed), logits_model(model)
    for b in range(b_count):
        flat = (
            maps[b].flatten().double().cpu()
            + torch.rand(h * w, generator=g, dtype=torch.float64) * 1e-9
        )
        order = torch.argsort(flat, descending=True)
        batch = []
        for p in percentages:
            k = int(round(p * h * w))
            most = torch.zeros(h * w, dtype=torch.bool)
            most[order[:k]] = True
            for mask in (most, ~most):  # MoRF: top p removed; LeRF: top p kept
                filled = impute(pixels[b], mask.view(h, w), noise=noise, seed=seed)
                batch.append(preprocess.normalize(filled.clamp(0, 1)))
        x = torch.stack(batch).to(images.device)
        with model_guard(model), torch.inference_mode():
            probs = class_probabilities(model, x)[:, int(classes[b])].cpu()
        morf[b] = probs[0::2]
        lerf[b] = probs[1::2]
    return RoadResult(tuple(percentages), morf, lerf)


@register_metric(
    "road",
    values=[
        ("road_morf", False, "ROAD MoRF (mean prob.)"),
        ("road_lerf", True, "ROAD LeRF (mean prob.)"),
        ("road_gap", True, "ROAD LeRF − MoRF"),
    ],
    source="Rong et al. 2202.00449 (noisy linear imputation)",
)
def _road(batch: MetricBatch) -> MetricOutput:
    b = batch
    r = road_curves(
        b.model,
        b.images,
        b.maps,
        b.preprocess,
        b.classes,
        b.config.road_percentages,
        seed=b.config.seed,
    )
    return MetricOutput(
        {"road_morf": r.morf_mean, "road_lerf": r.lerf_mean, "road_gap": r.gap},
        {"road_morf": r.morf, "road_lerf": r.lerf},
    )
