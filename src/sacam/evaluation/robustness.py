"""Adversarial stability of maps (Ghorbani et al., https://arxiv.org/abs/1710.10547).

Attacks take iterative signed steps in pixel space, ``x' = clip(x' + a·sign(g), x − eps,
x + eps)`` kept in [0, 1], with ``eps = 8/255``, ``a = 0.5/255`` and up to ``iterations``
(100) steps. Only label-preserving perturbations count: the attack returns the last
iterate whose predicted class is still the clean one. Kinds:

- ``"random"``: ``g`` is random sign noise at each step;
- ``"pgd"``: ``g`` is the gradient of the cross-entropy loss of the clean class (the
  attack pushes towards misclassification and stops before the label flips);
- ``"topk"``: ``g`` lowers the share of the top-k pixels of the clean map in the
  perturbed map. Maps of most methods are not differentiable end to end, so this attack
  differentiates a Grad-CAM map at the model's automatic target layer (a white-box attack
  on Grad-CAM there, a transfer attack on other methods and layers).

Measures between clean and perturbed maps: top-k intersection ``|topk ∩ topk'| / k``
(k = 1000 for 224×224), Spearman rank correlation, SSIM, centre-of-mass shift (pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from skimage.metrics import structural_similarity
from torch import nn

from .._hooks import Capture, model_guard
from .._layers import probe, resolve_layers
from .._outputs import OutputTransform, logits_model, unwrap
from ..core import predict
from ..errors import InputError
from ..models import Preprocess
from .adversarial import loss_gradient, project, top_k_mask
from .registry import MetricBatch, MetricOutput, register_metric

AttackKind = Literal["random", "pgd", "topk"]
MapFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _differentiable_gradcam(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM maps ``(B, H, W)`` that stay differentiable w.r.t. ``x`` (sum-normalised)."""
    refs = resolve_layers(unwrap(model), None, probe(unwrap(model), x.detach()))
    with Capture(refs, with_grad=True) as cap:
        out = logits_model(model)(x)
        score = out.gather(1, classes[:, None]).sum()
        act = cap.stored[refs[0].label]
        (grad,) = torch.autograd.grad(score, act, create_graph=True)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).sum(1).clamp_min(1e-12)[:, None, None]


def attack(
    model: nn.Module,
    images: torch.Tensor,
    preprocess: Preprocess,
    kind: AttackKind = "pgd",
    *,
    eps: float = 8 / 255,
    step: float = 0.5 / 255,
    iterations: int = 100,
    k: int = 1000,
    clean_maps: torch.Tensor | None = None,
    seed: int = 0,
    output_transform: OutputTransform | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturb images within ``eps`` (pixel space) while keeping the predicted label.

    Args:
        model: the classifier.
        images: ``(B, C, H, W)`` normalised inputs.
        preprocess: the model's preprocessing (to work in [0, 1] pixels).
        kind: ``"random"``, ``"pgd"`` or ``"topk"`` (see the module docstring).
        eps: L-infinity bound in pixel units.
        step: size ``a`` of each signed step.
        iterations: steps to take at most.
        k: top-k pixels for the ``"topk"`` attack.
        clean_maps: the clean maps ``(B, H, W)`` for ``"topk"``.
        seed: seed of the random attack.
        output_transform: reads the model's output as logits (see :func:`sacam.explain`).

    Returns:
        ``(perturbed, steps_kept)``: normalised perturbed images and, per image, the
        number of label-preserving steps (0 means the clean image itself).
    """
    if kind not in ("random", "pgd", "topk"):
        raise InputError(f"attack kind must be 'random', 'pgd' or 'topk', got {kind!r}")
    if kind == "topk" and clean_maps is None:
        raise InputError("the topk attack needs the clean maps")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model = logits_model(model, output_transform)
    with model_guard(model):
        classes = predict(model, images)
        x0 = preprocess.denormalize(images).detach()
        best = x0.clone()
        kept = torch.zeros(images.shape[0], dtype=torch.long)
        x = x0.clone()
        top_masks = top_k_mask(clean_maps, k) if kind == "topk" and clean_maps is not None else None
        for it in range(1, iterations + 1):
            g = _direction(model, x, preprocess, classes, kind, top_masks, gen)
            x = project(x + step * g.sign(), x0, eps).detach()
            with torch.inference_mode():
                same = model(preprocess.normalize(x)).argmax(1) == classes
            best[same] = x[same]
            kept[same.cpu()] = it
            if not same.any():
                break
    return preprocess.normalize(best), kept


def _direction(
    model: nn.Module,
    x: torch.Tensor,
    preprocess: Preprocess,
    classes: torch.Tensor,
    kind: AttackKind,
    top_masks: torch.Tensor | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """The direction ``g`` of one attack step (its sign is taken)."""
    if kind == "random":
        return torch.randint(0, 2, x.shape, generator=gen).to(x) * 2 - 1
    if kind == "pgd":
        return loss_gradient(model, x, preprocess, classes)
    assert top_masks is not None
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        cam = _differentiable_gradcam(model, preprocess.normalize(xg), classes)
        loss = -(cam * top_masks).flatten(1).sum()  # ascend = lower top-k mass
        (g,) = torch.autograd.grad(loss, xg)
    return g


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int = 1000) -> torch.Tensor:
    """``|topk(a) ∩ topk(b)| / k`` per sample, maps ``(B, H, W)``."""
    fa, fb = a.flatten(1), b.flatten(1)
    k = min(k, fa.shape[1])
    ia = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, fa.topk(k, 1).indices, True)
    ib = torch.zeros_like(fb, dtype=torch.bool).scatter_(1, fb.topk(k, 1).indices, True)
    return (ia & ib).sum(1).float().cpu() / k


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per sample; NaN where a map is constant."""
    out = []
    for x, y in zip(a.flatten(1).cpu().numpy(), b.flatten(1).cpu().numpy(), strict=True):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(float("nan"))
        else:
            out.append(float(stats.spearmanr(x, y).statistic))
    return torch.tensor(out)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of [0, 1] maps per sample (scikit-image, data_range 1)."""
    return torch.tensor(
        [
            float(structural_similarity(x, y, data_range=1.0))
            for x, y in zip(a.cpu().double().numpy(), b.cpu().double().numpy(), strict=True)
        ]
    )


def center_of_mass_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in pixels between the maps' centres of mass; NaN for an all-zero map."""
    h, w = a.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]

    def com(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = m.double().cpu()
        total = m.flatten(1).sum(1)
        r = (m * rows).flatten(1).sum(1) / total
        c = (m * cols).flatten(1).sum(1) / total
        return r, c, total

    ra, ca, ta = com(a)
    rb, cb, tb = com(b)
    d = torch.sqrt((ra - rb) ** 2 + (ca - cb) ** 2)
    return torch.where((ta > 0) & (tb > 0), d, torch.full_like(d, float("nan"))).float()


def stability(
    model: nn.Module,
    images: torch.Tensor,
    explain: MapFn,
    preprocess: Preprocess,
    kind: AttackKind = "pgd",
    *,
    eps: float = 8 / 255,
    step: float = 0.5 / 255,
    iterations: int = 100,
    k: int = 1000,
    seed: int = 0,
    output_transform: OutputTransform | None = None,
) -> dict[str, torch.Tensor]:
    """Attack the images and compare clean and perturbed maps.

    Args:
        model: the classifier.
        images: ``(B, C, H, W)`` normalised inputs.
        explain: ``(images, classes) -> (B, H, W)`` maps, e.g.
            ``lambda x, c: sacam.explain(model, x, "grad-cam", targets=c)``.
        preprocess: the model's preprocessing.
        kind: attack kind.
        eps: L-infinity bound (pixel units).
        step: step size.
        iterations: maximum steps.
        k: top-k for the intersection (and the topk attack).
        seed: random attack seed.
        output_transform: reads the model's output as logits (see :func:`sacam.explain`).

    Returns:
        per-sample ``topk_intersection``, ``spearman``, ``ssim``, ``com_shift`` and
        ``steps`` (label-preserving steps taken).
    """
    model = logits_model(model, output_transform)
    classes = predict(model, images)
    clean = explain(images, classes)
    adv, kept = attack(
        model,
        images,
        preprocess,
        kind,
        eps=eps,
        step=step,
        iterations=iterations,
        k=k,
        clean_maps=clean,
        seed=seed,
    )
    perturbed = explain(adv, classes)
    return {
        "topk_intersection": topk_intersection(clean, perturbed, k),
        "spearman": spearman(clean, perturbed),
        "ssim": ssim(clean, perturbed),
        "com_shift": center_of_mass_shift(clean, perturbed),
        "steps": kept.float(),
    }


_MEASURES = (
    ("topk_intersection", "topk", True, "top-k intersection"),
    ("spearman", "spearman", True, "Spearman"),
    ("ssim", "ssim", True, "SSIM"),
    ("com_shift", "com_shift", False, "centre-of-mass shift, px"),
    ("steps", "steps", True, "label-preserving steps taken"),
)


@register_metric(
    "stability",
    values=[
        (f"stability_{kind}_{short}", higher, f"{kind} attack: {text}")
        for kind in ("random", "pgd", "topk")
        for _, short, higher, text in _MEASURES
    ],
    source="Ghorbani et al. 1710.10547 (eps 8/255, step 0.5/255)",
    needs=("gradients", "attacks", "method"),
)
def _stability(batch: MetricBatch) -> MetricOutput:
    b, cfg = batch, batch.config
    explain = b.explain
    assert explain is not None
    values: dict[str, torch.Tensor] = {}
    for kind in cfg.attacks:
        res = stability(
            b.model,
            b.images,
            lambda imgs, cls: explain(b.model, imgs, cls),
            b.preprocess,
            kind,  # type: ignore[arg-type]
            eps=cfg.eps,
            step=cfg.attack_step,
            iterations=cfg.iterations,
            k=cfg.topk,
            seed=cfg.seed,
        )
        for key, short, _, _ in _MEASURES:
            values[f"stability_{kind}_{short}"] = res[key]
    return MetricOutput(values)
