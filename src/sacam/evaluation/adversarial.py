"""Adversarial stability of maps: the attacks behind ``adversarial`` and ``explanation_attack``.

Ghorbani et al., Interpretation of Neural Networks is Fragile, https://arxiv.org/abs/1710.10547.
Every attack works in pixel space ([0, 1] RGB before normalisation) with signed steps
``x' = clip(x' + a·sign(g), x − ε, x + ε)`` kept in [0, 1], ``a = ε/8`` by default, and
is run for each ``ε`` of a sweep (0.5, 1, 2, 4, 8 /255 by default). Two kinds:

1. **Label-preserving attacks on the explanation** (:func:`explanation_attack`): ``g`` is
   random sign noise (``"random"``, the floor), the classifier's loss gradient
   (``"pgd"``: label-preserving PGD; the map is not differentiated), or the gradient of
   an objective on the explained method's **own** map, differentiated w.r.t. the input
   through the method (white-box; ``BaseCAM.explain_graph``, a double backward for
   gradient methods): ``"topk"`` lowers the map's mass (the map divided by its sum) on the clean
   map's top-k pixels, ``"com"`` moves the map's centre of mass away from the clean one.
   A step after which the predicted class is no longer the clean top-1 is rejected (the
   image stays where it was); since a white-box step is deterministic, the same step
   would come again, so that image's attack ends there. The number of kept steps is
   reported. Methods whose map is not differentiable (perturbation methods, NumPy
   variants) are attacked through a Grad-CAM map at the same layer instead (a transfer
   attack), and the result says so (``xattack_white_box`` = 0).
2. **Adversarial comparison** (:func:`adversarial_examples`): adversarial examples for the
   classifier, FGSM (one step of size ``ε``) and PGD (``adv_iterations`` steps of ``a``),
   on the cross-entropy loss of the clean top-1 class; the map of the **clean** top-1
   class is compared on the clean and the attacked image, whatever the attacked image is
   classified as (``adv_*_flipped`` says whether its label changed). The adversarial
   examples depend only on the classifier, so every method is compared on the same ones.

The registered metrics (``adversarial``, ``explanation_attack``) that run these attacks
over an ε sweep and compare the maps are in :mod:`sacam.evaluation.adversarial_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._hooks import model_guard
from .._outputs import OutputTransform, logits_model
from ..errors import InputError
from ..preprocess import Preprocess
from ..scores import predict

AdversaryKind = Literal["fgsm", "pgd"]
MapAttackKind = Literal["random", "pgd", "topk", "com"]
GraphMapFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ADVERSARY_KINDS: tuple[AdversaryKind, ...] = ("fgsm", "pgd")
MAP_ATTACK_KINDS: tuple[MapAttackKind, ...] = ("random", "pgd", "topk", "com")


def project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x`` to the L-infinity ball of radius ``eps`` around ``x0`` and to [0, 1]."""
    return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)


def _check_eps(eps: float, step: float | None) -> float:
    if not eps > 0:
        raise InputError(f"eps must be above 0, got {eps}")
    if step is not None and not step > 0:
        raise InputError(f"the attack step must be above 0, got {step}")
    return eps / 8 if step is None else step


def loss_gradient(
    model: nn.Module, x: torch.Tensor, preprocess: Preprocess, classes: torch.Tensor
) -> torch.Tensor:
    """``∂/∂x`` of the summed cross-entropy of ``classes``, ``x`` in pixel space."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(preprocess.normalize(xg)), classes, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    return g


def adversarial_examples(
    model: nn.Module,
    images: torch.Tensor,
    preprocess: Preprocess,
    kind: AdversaryKind = "pgd",
    *,
    eps: float = 8 / 255,
    step: float | None = None,
    iterations: int = 10,
    classes: torch.Tensor | None = None,
    output_transform: OutputTransform | None = None,
) -> torch.Tensor:
    """Adversarial examples for the classifier (FGSM or PGD on the cross-entropy loss).

    FGSM: ``x' = clip(x + ε·sign(∇_x L(x, c)), 0, 1)``. PGD: ``iterations`` steps
    ``x' = clip(x' + a·sign(∇_x L(x', c)), x ± ε)`` in [0, 1], from ``x`` (no random
    start), ``a = ε/8`` by default. ``L`` is the cross-entropy of the clean top-1 class
    ``c``; the label is free to change (that is the point).

    Args:
        model: the classifier.
        images: ``(B, C, H, W)`` normalised inputs.
        preprocess: the model's preprocessing (the attack works on [0, 1] pixels).
        kind: ``"fgsm"`` or ``"pgd"``.
        eps: L-infinity bound in pixel units.
        step: PGD's step ``a`` (default ``eps / 8``).
        iterations: PGD's steps.
        classes: the attacked class per image (default: the clean top-1).
        output_transform: reads the model's output as logits (see :func:`sacam.explain`).

    Returns:
        The normalised adversarial images, ``(B, C, H, W)``.
    """
    if kind not in ADVERSARY_KINDS:
        raise InputError(f"adversary kind must be 'fgsm' or 'pgd', got {kind!r}")
    a = _check_eps(eps, step)
    model = logits_model(model, output_transform)
    with model_guard(model):
        c = predict(model, images) if classes is None else classes
        x0 = preprocess.denormalize(images).detach()
        if kind == "fgsm":
            x = (x0 + eps * loss_gradient(model, x0, preprocess, c).sign()).clamp(0, 1)
        else:
            x = x0.clone()
            for _ in range(iterations):
                x = project(x + a * loss_gradient(model, x, preprocess, c).sign(), x0, eps)
    return preprocess.normalize(x.detach())


def centre_of_mass(maps: torch.Tensor) -> torch.Tensor:
    """Centre of mass ``(row, col)`` in pixels of each map ``(B, H, W)``; differentiable.

    A map without mass (all zeros) gets the image centre.

    Example:
        >>> m = torch.zeros(1, 3, 4)
        >>> m[0, 0, 1], m[0, 2, 3] = 1.0, 3.0
        >>> centre_of_mass(m).tolist()  # rows (1·0 + 3·2)/4, columns (1·1 + 3·3)/4
        [[1.5, 2.5]]
    """
    h, w = maps.shape[-2:]
    rows = torch.arange(h, dtype=maps.dtype, device=maps.device)
    cols = torch.arange(w, dtype=maps.dtype, device=maps.device)
    total = maps.sum((1, 2))
    ok = total > 0
    safe = torch.where(ok, total, torch.ones_like(total))
    r = (maps.sum(2) * rows).sum(1) / safe
    c = (maps.sum(1) * cols).sum(1) / safe
    r = torch.where(ok, r, torch.full_like(r, (h - 1) / 2))
    c = torch.where(ok, c, torch.full_like(c, (w - 1) / 2))
    return torch.stack([r, c], 1)


def top_k_mask(maps: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 on each map's top-k pixels, 0 elsewhere; the maps' shape."""
    flat = maps.flatten(1)
    idx = flat.topk(min(k, flat.shape[1]), dim=1).indices
    return torch.zeros_like(flat).scatter_(1, idx, 1.0).view_as(maps)


def map_objective(
    maps: torch.Tensor,
    kind: MapAttackKind,
    top_mask: torch.Tensor,
    clean_centre: torch.Tensor,
) -> torch.Tensor:
    """Per-image objective an attack ascends, ``(B,)``.

    ``"topk"``: ``−Σ_{i ∈ topk} m_i / Σ_i m_i`` (the mass left on the clean top-k
    pixels, negated). ``"com"``: ``‖C(m) − C_0‖₂`` (distance of the centre of mass from
    the clean one); where it is 0 (the first step), its gradient is undefined, so the
    objective is ``(C(m) − C_0)·u`` with ``u`` the unit vector from the image centre to
    ``C_0`` (the mass is pushed outwards; ``u = (1, 1)/√2`` at the centre itself).
    """
    if kind == "topk":
        total = maps.flatten(1).sum(1).clamp_min(1e-12)
        return -(maps * top_mask).flatten(1).sum(1) / total
    if kind != "com":
        raise InputError(f"map attack objective must be 'topk' or 'com', got {kind!r}")
    h, w = maps.shape[-2:]
    shift = centre_of_mass(maps) - clean_centre
    dist2 = (shift**2).sum(1)
    out = clean_centre - torch.tensor([(h - 1) / 2, (w - 1) / 2]).to(clean_centre)
    norm = out.norm(dim=1, keepdim=True)
    diagonal = torch.full_like(out, 0.5**0.5)
    u = torch.where(norm > 1e-6, out / norm.clamp_min(1e-6), diagonal)
    return torch.where(dist2 > 1e-12, dist2.clamp_min(1e-12).sqrt(), (shift * u).sum(1))


def explanation_attack(
    model: nn.Module,
    images: torch.Tensor,
    preprocess: Preprocess,
    map_fn: GraphMapFn,
    kind: MapAttackKind = "topk",
    *,
    eps: float = 8 / 255,
    step: float | None = None,
    iterations: int = 100,
    k: int = 1000,
    classes: torch.Tensor | None = None,
    seed: int = 0,
    clean_maps: torch.Tensor | None = None,
    output_transform: OutputTransform | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-preserving attack on a map (Ghorbani's top-k and centre-of-mass attacks).

    Args:
        model: the classifier.
        images: ``(B, C, H, W)`` normalised inputs.
        preprocess: the model's preprocessing.
        map_fn: ``(images, classes) -> (B, H, W)`` maps differentiable w.r.t. the images
            (``cam.explain_graph(x, c).maps``); unused by ``"random"``.
        kind: ``"random"`` (sign noise), ``"pgd"`` (label-preserving PGD on the classifier's
            loss: the map is not differentiated), ``"topk"`` or ``"com"`` (see
            :func:`map_objective`).
        eps: L-infinity bound in pixel units.
        step: step ``a`` (default ``eps / 8``).
        iterations: steps tried at most.
        k: top-k pixels of the ``"topk"`` objective.
        classes: the explained class per image (default: the clean top-1).
        seed: seed of the random attack (one ``(C, H, W)`` draw per step for the batch).
        clean_maps: ``map_fn`` on the clean images, if already known (else computed).
        output_transform: reads the model's output as logits (see :func:`sacam.explain`).

    Returns:
        ``(perturbed, kept)``: normalised images, and kept steps per image (0: clean).
    """
    if kind not in MAP_ATTACK_KINDS:
        raise InputError(f"map attack kind must be 'random', 'pgd', 'topk' or 'com', got {kind!r}")
    a = _check_eps(eps, step)
    model = logits_model(model, output_transform)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with model_guard(model):
        c = predict(model, images) if classes is None else classes.to(images.device)
        x0 = preprocess.denormalize(images).detach()

        if kind == "random":
            direction = _noise_direction(gen)
        elif kind == "pgd":
            direction = _loss_direction(model, preprocess, c)
        else:
            direction = _map_direction(images, c, preprocess, map_fn, kind, k, clean_maps)
        x, kept = _label_preserving_steps(
            model, x0, c, preprocess, direction, eps, a, iterations, kind != "random"
        )
    return preprocess.normalize(x), kept


def _noise_direction(gen: torch.Generator) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Random signs, one ``(C, H, W)`` draw per step shared by the batch (the floor)."""

    def noise(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        signs = torch.randint(0, 2, x.shape[1:], generator=gen).to(x) * 2 - 1
        return signs.expand_as(x)

    return noise


def _loss_direction(
    model: nn.Module, preprocess: Preprocess, classes: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The cross-entropy gradient of the explained classes (label-preserving PGD)."""

    def ascend(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return loss_gradient(model, x, preprocess, classes[idx])

    return ascend


def _map_direction(
    images: torch.Tensor,
    classes: torch.Tensor,
    preprocess: Preprocess,
    map_fn: GraphMapFn,
    kind: MapAttackKind,
    k: int,
    clean_maps: torch.Tensor | None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The white-box direction ``(x, idx) -> g`` of the top-k or centre-of-mass attack."""
    if clean_maps is None:
        with torch.no_grad():
            clean_maps = map_fn(images, classes)
    clean = clean_maps.detach()
    top_mask, centre = top_k_mask(clean, k), centre_of_mass(clean.double()).to(clean)

    def direction(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return _map_gradient(x, classes[idx], preprocess, map_fn, kind, top_mask[idx], centre[idx])

    return direction


def _label_preserving_steps(
    model: nn.Module,
    x0: torch.Tensor,
    classes: torch.Tensor,
    preprocess: Preprocess,
    direction: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    eps: float,
    a: float,
    iterations: int,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed steps from ``x0`` (pixels); a step that changes the label is rejected.

    ``direction(x, idx)`` gives ``g`` for the images ``idx`` still attacked. A
    deterministic attack stops for an image at its first rejected step (it would propose
    the same step again). Returns the last accepted pixels and the kept steps per image.
    """
    x = x0.clone()
    kept = torch.zeros(x0.shape[0], dtype=torch.long)
    active = torch.ones(x0.shape[0], dtype=torch.bool)
    for _ in range(iterations):
        idx = active.nonzero()[:, 0].to(x.device)
        g = direction(x[idx], idx)
        proposal = project(x[idx] + a * g.sign(), x0[idx], eps).detach()
        with torch.inference_mode():
            same = model(preprocess.normalize(proposal)).argmax(1) == classes[idx]
        x[idx[same]] = proposal[same]
        kept[idx[same].cpu()] += 1
        if deterministic:
            active[idx[~same].cpu()] = False
        if not active.any():
            break
    return x, kept


def _map_gradient(
    x: torch.Tensor,
    classes: torch.Tensor,
    preprocess: Preprocess,
    map_fn: GraphMapFn,
    kind: MapAttackKind,
    top_mask: torch.Tensor,
    centre: torch.Tensor,
) -> torch.Tensor:
    """Gradient of :func:`map_objective` w.r.t. the pixels ``x`` (zero where the map is flat)."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        maps = map_fn(preprocess.normalize(xg), classes)
        objective = map_objective(maps, kind, top_mask, centre).sum()
        if not objective.requires_grad:  # a map that does not depend on the input
            return torch.zeros_like(x)
        (g,) = torch.autograd.grad(objective, xg, allow_unused=True)
    return torch.zeros_like(x) if g is None else torch.nan_to_num(g)
