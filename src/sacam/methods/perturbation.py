"""Perturbation CAMs: weights from the model's scores on perturbed inputs.

Importing this module registers them, in this order: the Score-CAM family
(:mod:`.scorecam`: Score-CAM, SS-CAM, IS-CAM), Ablation-CAM (:mod:`.ablation`) and
Group-CAM (:mod:`.groupcam`). Their shared loop and batch plan live in :mod:`._perturb`.
The names stay importable from here (``from sacam.methods.perturbation import ScoreCAM``).
"""

from __future__ import annotations

from ._perturb import (
    PerturbationCAM,
    batch_target_scores,
    channel_masks,
    perturbed_scores,
    target_scores,
)

from .scorecam import ISCAM, SSCAM, MaskScoreCAM, ScoreCAM  # isort: skip
from .ablation import ABLATION_CAM_URL, AblationCAM  # isort: skip
from .groupcam import GroupCAM  # isort: skip

__all__ = [
    "ABLATION_CAM_URL",
    "ISCAM",
    "SSCAM",
    "AblationCAM",
    "GroupCAM",
    "MaskScoreCAM",
    "PerturbationCAM",
    "ScoreCAM",
    "batch_target_scores",
    "channel_masks",
    "perturbed_scores",
    "target_scores",
]
