"""Named protocols of several runs: ``sacam benchmark DATA_DIR --preset paper``.

A preset is a list of *settings* (a model and a layer), each run as one ordinary
benchmark run into its own sub-folder of ``--out`` (``OUT/<setting>/``, with its own
results, summary, lock and resume), with the preset's methods and metrics unless
``--methods`` / ``--metrics`` are given. Every other option (``--limit``, ``--device``,
``--epsilons``, ...) applies to every setting.

``paper`` is the protocol for the SA-CAM paper's two claims (accurate maps, stable
maps), on every registered method, in four settings (docs/evaluation.md, "Presets"):
``lite0-head`` (EfficientNet-Lite0, automatic layer ``_swish@1``: the paper-like setting),
``lite0-blocks15`` (``_blocks.15``, 320×7×7, where gradients vary over positions),
``lite0-blocks10`` (``_blocks.10``, 112×14×14) and ``lite2-head`` (EfficientNet-Lite2,
automatic layer: a second pretrained model).

Metrics: ``confidence``, ``deletion``, ``insertion``, ``road``, ``grid_pointing``,
``adversarial``, ``explanation_attack``, ``complexity`` (box pointing games need boxes:
add them with ``--metrics`` and ``--annotations``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import SacamError
from ..registry import list_methods
from .config import BenchmarkConfig


@dataclass(frozen=True)
class Setting:
    """One run of a preset: its sub-folder name, model and layer (None: automatic)."""

    name: str
    model: str | None
    layer: tuple[str, ...] | None
    why: str


@dataclass(frozen=True)
class Preset:
    """A named list of settings with the metrics they score."""

    name: str
    settings: tuple[Setting, ...]
    metrics: tuple[str, ...]


PAPER = Preset(
    "paper",
    (
        Setting("lite0-head", "efficientnet-lite0", None, "paper-like: the head activation"),
        Setting("lite0-blocks15", "efficientnet-lite0", ("_blocks.15",), "gradients vary"),
        Setting("lite0-blocks10", "efficientnet-lite0", ("_blocks.10",), "finer, earlier"),
        Setting("lite2-head", "efficientnet-lite2", None, "a second pretrained model"),
    ),
    (
        "confidence",
        "deletion",
        "insertion",
        "road",
        "grid_pointing",
        "adversarial",
        "explanation_attack",
        "complexity",
    ),
)

PRESETS: dict[str, Preset] = {PAPER.name: PAPER}


def expand_preset(
    name: str,
    base: BenchmarkConfig,
    *,
    methods: list[str] | None = None,
    metrics: list[str] | None = None,
    only: list[str] | None = None,
) -> list[BenchmarkConfig]:
    """The runs of a preset: one config per setting, writing to ``base.out / setting``.

    Args:
        name: the preset (``"paper"``).
        base: every option that is not the preset's (``out`` is the parent folder).
        methods: the methods (default: every registered method).
        metrics: the metrics (default: the preset's).
        only: run only these settings (names from the preset's table).

    Raises:
        SacamError: an unknown preset or setting, or a base that sets the model, weights
            or layer (the preset sets them).
    """
    preset = PRESETS.get(name)
    if preset is None:
        raise SacamError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    if base.model is not None or base.weights is not None or base.layer is not None:
        raise SacamError(
            f"--preset {name} sets the model and layer of each run: drop --model, --weights "
            "and --layer (or run without --preset)"
        )
    names = [s.name for s in preset.settings]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise SacamError(
            f"preset {name!r} has no setting {', '.join(unknown)}; valid: {', '.join(names)}"
        )
    runs = []
    for s in preset.settings:
        if only and s.name not in only:
            continue
        runs.append(
            dataclasses.replace(
                base,
                out=base.out / s.name,
                model=s.model,
                layer=None if s.layer is None else list(s.layer),
                methods=list(methods or list_methods()),
                metrics=list(metrics or preset.metrics),
                method_options={k: dict(v) for k, v in base.method_options.items()},
            )
        )
    return runs
