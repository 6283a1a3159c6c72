"""sacam: class activation maps, with SA-CAM, for classifiers, detectors and segmenters.

The stable surface is :func:`explain` and :func:`list_methods`; detectors have
:mod:`sacam.detection`, multi-label classifiers and segmenters :func:`explain_labels` and
:func:`explain_segmentation`, and transformer token layers :func:`with_layout` where a
layer's layout cannot be read from its output.
"""

from importlib.metadata import PackageNotFoundError, version

# methods registers the methods; the others are public submodules
from . import detection, methods, scores, smoothing, tokens, transforms  # noqa: F401
from ._layers import list_layers
from ._speed.allocator import keep_freed_memory
from .api import build_method, explain, explain_full
from .core import BaseCAM
from .errors import InputError, LayerError, MethodError, ModelError, SacamError, TargetError
from .explanation import Explanation
from .labels import explain_labels, explain_segmentation
from .methods.dff import Concepts, concepts
from .registry import get_method, list_methods, method_info, register_method
from .targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    InstanceMaskTarget,
    SemanticSegmentationTarget,
)
from .tokens import with_layout


def __getattr__(name: str) -> object:
    """``sacam.plot_concepts``, imported on first use (matplotlib loads only then)."""
    if name == "plot_concepts":
        from .viz import plot_concepts

        return plot_concepts
    raise AttributeError(f"module 'sacam' has no attribute {name!r}")


try:
    __version__ = version("sacam")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BaseCAM",
    "ClassifierOutputSoftmaxTarget",
    "Concepts",
    "ClassifierOutputTarget",
    "Explanation",
    "InputError",
    "InstanceMaskTarget",
    "LayerError",
    "MethodError",
    "ModelError",
    "SacamError",
    "SemanticSegmentationTarget",
    "TargetError",
    "__version__",
    "build_method",
    "concepts",
    "explain",
    "explain_full",
    "explain_labels",
    "explain_segmentation",
    "get_method",
    "keep_freed_memory",
    "list_layers",
    "list_methods",
    "method_info",
    "plot_concepts",
    "register_method",
    "with_layout",
]
