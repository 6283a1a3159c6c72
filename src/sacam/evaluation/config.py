"""The settings of an evaluation run (``sacam benchmark``), in one dataclass.

Every parameter of the metric protocols lives here with its default, so that the CLI,
the runner and ``run.json`` agree on what a run did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._speed.tuner import check_inputs_per_pass
from ..errors import InputError
from ..models import LoadedModel, load_model, with_preprocess

ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
EPSILONS = tuple(e / 255 for e in (0.5, 1.0, 2.0, 4.0, 8.0))
DEFAULT_METHODS = ("grad-cam", "grad-cam++", "sa-cam")
TASKS = ("classification", "detection", "segmentation")

# settings renamed since: a run.json written with the old name resumes
RENAMED_SETTINGS = {"curve_batch_size": "curve_inputs_per_pass"}

# fields that change how fast or where a run works, not its numbers (free to change on resume)
_RUN_ONLY = (
    "out",
    "limit",
    "data_dir",
    "methods",
    "device",
    "images_per_step",
    "workers",
    "save_maps",
    "from_maps",
    "trust_model_file",
)


@dataclass
class BenchmarkConfig:
    """Settings of one benchmark run; every parameter of the protocols is here.

    Attributes:
        data_dir: the images (flat folder with ``labels.csv``, class sub-folders, or the
            ImageNet validation layout with ``LOC_val_solution.csv``).
        out: output folder.
        images_per_step: images explained and scored per step (a whole number ≥ 1).
        curve_inputs_per_pass: the most perturbed images per forward pass of the
            deletion/insertion curves, or ``"auto"`` (tuned on the curves' first passes,
            cached per model and input shape).
        steps: deletion/insertion steps; None means one step per image row (n = 224 at
            224×224).
        workers: threads decoding and preprocessing images ahead of the model.
        save_maps: keep every map (float16) in ``out/maps/``.
        trust_model_file: allow a model file that runs code when loaded (see
            :func:`sacam.models.load_model`).
        from_maps: score maps saved by an earlier ``save_maps`` run instead of computing them.
        layer: the layer(s) every method explains (dotted names; None: each method's
            automatic choice).
        method_options: options per method, e.g. ``{"sa-cam": {"tau": 5.0}}``.
        iterations: attack steps of ``explanation_attack``.
        attacks, eps, attack_step: read by no metric since the single-point stability
            protocol was retired; kept in the settings so that run folders written with
            them still resume.
        epsilons: the ε sweep (pixel units) of the ``adversarial`` and
            ``explanation_attack`` metrics.
        step_fraction: their step ``a = step_fraction · ε``.
        adv_iterations: PGD steps of the adversarial examples (``adversarial``).
        mean, std: per-channel normalisation of [0, 1] pixels (None: the model's own,
            else ImageNet's), for a model of your own.
        class_names: the model's class names in class-index order (None: the ImageNet
            names for 1000-class models); class folders and ``labels.csv`` may then name
            their classes by these names, and ``predictions.csv`` shows them.
        task: ``"classification"``, or ``"detection"`` / ``"segmentation"`` (one map per
            annotated object, :mod:`sacam.evaluation.runner.tasks`).
        min_iou: detection and segmentation: the least IoU of a prediction with an
            object for it to count as found (else the object is missed).
        score_threshold: detection: the least score of a detection that may match.
        box_format, objectness, dense_layout: detection, YOLO-style tensor outputs: how
            to read them (:class:`sacam.detection.DenseFormat`).
    """

    data_dir: Path
    out: Path = Path("sacam-benchmark")
    model: str | None = None
    weights: str | None = None
    layer: list[str] | None = None
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    class_names: list[str] | None = None
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    metrics: list[str] = field(default_factory=lambda: ["default"])
    limit: int | None = None
    use_labels: bool = False
    device: str = "cpu"
    images_per_step: int = 16
    workers: int = 4
    steps: int | None = None
    curve_inputs_per_pass: int | Literal["auto"] = "auto"
    road_percentages: tuple[float, ...] = ROAD_PERCENTAGES
    annotations: Path | None = None
    tolerance: float = 15.0
    grid_n: int = 2
    grid_threshold: float = 0.99
    grid_count: int | None = None
    grid_smooth: int = 0
    attacks: tuple[str, ...] = ("pgd",)
    eps: float = 8 / 255
    attack_step: float = 0.5 / 255
    iterations: int = 100
    topk: int = 1000
    epsilons: tuple[float, ...] = EPSILONS
    step_fraction: float = 1 / 8
    adv_iterations: int = 10
    sanity_layers: int = 6
    seed: int = 0
    save_maps: bool = False
    from_maps: Path | None = None
    trust_model_file: bool = False
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    task: Literal["classification", "detection", "segmentation"] = "classification"
    min_iou: float = 0.5
    score_threshold: float = 0.5
    box_format: Literal["xywh", "xyxy"] = "xywh"
    objectness: bool = False
    dense_layout: Literal["auto", "bnd", "bdn"] = "auto"

    def __post_init__(self) -> None:
        check_inputs_per_pass(self.images_per_step, "images_per_step", InputError, auto=False)
        check_inputs_per_pass(self.curve_inputs_per_pass, "curve_inputs_per_pass", InputError)
        if self.task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0.0 <= self.min_iou <= 1.0:
            raise InputError(f"min_iou must be in [0, 1], got {self.min_iou}")

    def method_layer(self) -> str | list[str] | None:
        """The ``layer`` argument of the methods: one name, a list, or None."""
        if self.layer is None or len(self.layer) > 1:
            return self.layer
        return self.layer[0]

    def settings(self) -> dict[str, Any]:
        """The settings that change the numbers (compared when resuming)."""
        d = asdict(self)
        for key in _RUN_ONLY:
            d.pop(key)
        d["road_percentages"] = list(self.road_percentages)
        d["attacks"] = list(self.attacks)
        d["epsilons"] = list(self.epsilons)
        d["annotations"] = str(self.annotations) if self.annotations else None
        return d


def load_run_model(config: BenchmarkConfig) -> LoadedModel:
    """The run's model on its device, with the config's input size, mean, std and names."""
    lm = load_model(
        config.model,
        weights=config.weights,
        device=config.device,
        trust_model_file=config.trust_model_file,
        size=config.image_size,
        class_names=config.class_names,
    )
    changes = {k: tuple(v) for k in ("mean", "std") if (v := getattr(config, k)) is not None}
    return with_preprocess(lm, **changes) if changes else lm
