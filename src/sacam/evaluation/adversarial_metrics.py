"""The ε-sweep stability metrics of ``sacam benchmark``: the one stability protocol.

``adversarial`` (the adversarial comparison) and ``explanation_attack`` (label-preserving
attacks on each method's own map) run the attacks of
:mod:`sacam.evaluation.adversarial` at every ε of the run's ``epsilons`` and compare the
clean and the perturbed map with the four measures of
:mod:`sacam.evaluation.robustness`: top-k intersection, Spearman rank correlation, SSIM
and centre-of-mass shift in pixels. Values are written per ε with the suffix
``@<ε·255>`` (``adv_fgsm_topk@2``).
"""

from __future__ import annotations

import torch

from ..api import build_method
from ..core import BaseCAM
from ..scores import predict
from .adversarial import (
    ADVERSARY_KINDS,
    MAP_ATTACK_KINDS,
    GraphMapFn,
    adversarial_examples,
    explanation_attack,
)
from .registry import MetricBatch, MetricOutput, Need, register_metric
from .robustness import center_of_mass_shift, spearman, ssim, topk_intersection


def eps_label(eps: float) -> str:
    """The suffix naming an ε in value names: ε in units of 1/255 (``2/255 → "2"``).

    Example:
        >>> [eps_label(e / 255) for e in (0.5, 1, 8)]
        ['0.5', '1', '8']
    """
    return f"{round(eps * 255, 6):g}"  # the same rule as registry.written_names


def compare_maps(clean: torch.Tensor, perturbed: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The four measures between clean and perturbed maps, per image."""
    return {
        "topk": topk_intersection(clean, perturbed, k),
        "spearman": spearman(clean, perturbed),
        "ssim": ssim(clean, perturbed),
        "com_shift": center_of_mass_shift(clean, perturbed),
    }


_MEASURES = (
    ("topk", True, "top-k intersection"),
    ("spearman", True, "Spearman"),
    ("ssim", True, "SSIM"),
    ("com_shift", False, "centre-of-mass shift, px"),
)


def _measured(prefix: str, kinds: tuple[str, ...], label: str) -> list[tuple[str, bool, str]]:
    """The swept values ``{prefix}_{kind}_{measure}`` of every kind and map measure.

    ``label`` names the kind in each description (``{kind}`` or ``{KIND}``, upper case).
    """
    return [
        (
            f"{prefix}_{kind}_{short}",
            higher,
            f"{label.format(kind=kind, KIND=kind.upper())}: {text}",
        )
        for kind in kinds
        for short, higher, text in _MEASURES
    ]


def _per_kind(
    prefix: str, kinds: tuple[str, ...], short: str, higher: bool, text: str
) -> list[tuple[str, bool, str]]:
    """One swept value ``{prefix}_{kind}_{short}`` per kind (not a map measure)."""
    label = (lambda k: k.upper()) if prefix == "adv" else (lambda k: f"{k} attack")
    return [(f"{prefix}_{kind}_{short}", higher, f"{label(kind)}: {text}") for kind in kinds]


def _record(
    values: dict[str, torch.Tensor], b: MetricBatch, prefix: str, tag: str, adv: torch.Tensor
) -> None:
    """Explain ``adv`` and store the four measures against the clean maps as ``prefix_*@tag``."""
    assert b.explain is not None
    perturbed = b.explain(b.model, adv, b.classes)
    for short, val in compare_maps(b.maps, perturbed, b.config.topk).items():
        values[f"{prefix}_{short}@{tag}"] = val


ATTACK_NEEDS: tuple[Need, ...] = ("gradients", "attacks", "method")
"""What both attack metrics need: gradients, the attack settings and the method's maps."""


@register_metric(
    "adversarial",
    values=[],
    swept=_measured("adv", ADVERSARY_KINDS, "{KIND} adversarial example")
    + _per_kind("adv", ADVERSARY_KINDS, "flipped", False, "share of labels flipped (per model)"),
    source="map of the clean class on the clean vs the adversarial image (FGSM, PGD)",
    needs=ATTACK_NEEDS,
)
def _adversarial(batch: MetricBatch) -> MetricOutput:
    b, cfg = batch, batch.config
    values: dict[str, torch.Tensor] = {}
    for eps in cfg.epsilons:
        for kind in ADVERSARY_KINDS:
            adv = adversarial_examples(
                b.model,
                b.images,
                b.preprocess,
                kind,
                eps=eps,
                step=eps * cfg.step_fraction,
                iterations=cfg.adv_iterations,
                classes=b.classes,
            )
            with torch.inference_mode():
                flipped = (predict(b.model, adv) != b.classes).float().cpu()
            tag = eps_label(eps)
            _record(values, b, f"adv_{kind}", tag, adv)
            values[f"adv_{kind}_flipped@{tag}"] = flipped
    return MetricOutput(values)


def graph_map_fn(batch: MetricBatch) -> tuple[GraphMapFn, bool]:
    """The differentiable map an explanation attack ascends, and whether it is white-box.

    The explained method's own map (its run options and layer) when the method supports
    ``explain_graph``; otherwise a Grad-CAM map at the run's layer (a transfer attack).
    """
    from .runner.state import method_options  # the runner imports this module's registry

    cfg = batch.config
    cam = build_method(
        batch.model, batch.method, cfg.method_layer(), **method_options(cfg, batch.method)
    )
    white_box = cam.supports_graph()
    if not white_box:
        cam = build_method(batch.model, "grad-cam", cfg.method_layer())
    target: BaseCAM = cam

    def fn(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return target.explain_graph(x, classes).maps

    return fn, white_box


@register_metric(
    "explanation_attack",
    values=[("xattack_white_box", True, "1: the method's own map was attacked; 0: Grad-CAM's")],
    swept=_measured("xattack", MAP_ATTACK_KINDS, "{kind} attack on the map")
    + _per_kind("xattack", MAP_ATTACK_KINDS, "steps", True, "label-preserving steps kept"),
    source="Ghorbani et al. 1710.10547, white-box on each method's own map",
    needs=ATTACK_NEEDS,
)
def _explanation_attack(b: MetricBatch) -> MetricOutput:
    cfg = b.config
    map_fn, white_box = graph_map_fn(b)
    with torch.no_grad():  # the attacked map on the clean images (the method's own: b.maps)
        attacked_clean = b.maps if white_box else map_fn(b.images, b.classes).detach()
    values: dict[str, torch.Tensor] = {
        "xattack_white_box": torch.full((b.images.shape[0],), float(white_box))
    }
    for eps in cfg.epsilons:
        tag = eps_label(eps)
        for kind in MAP_ATTACK_KINDS:
            adv, kept = explanation_attack(
                b.model,
                b.images,
                b.preprocess,
                map_fn,
                kind,
                eps=eps,
                step=eps * cfg.step_fraction,
                iterations=cfg.iterations,
                k=cfg.topk,
                classes=b.classes,
                seed=cfg.seed,
                clean_maps=attacked_clean,
            )
            _record(values, b, f"xattack_{kind}", tag, adv)
            values[f"xattack_{kind}_steps@{tag}"] = kept.float()
    return MetricOutput(values)
