"""sacam: class activation maps for convolutional classifiers, with SA-CAM.

The stable surface is :func:`explain` and :func:`list_methods`.
"""

from importlib.metadata import PackageNotFoundError, version

# methods registers the methods; smoothing and transforms are public submodules
from . import methods, smoothing, transforms  # noqa: F401
from ._layers import list_layers
from ._speed.allocator import keep_freed_memory
from .api import build_method, explain, explain_full
from .core import BaseCAM
from .errors import InputError, LayerError, MethodError, ModelError, SacamError, TargetError
from .explanation import Explanation
from .methods.dff import Concepts, concepts
from .registry import get_method, list_methods, method_info, register_method
from .targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    SemanticSegmentationTarget,
)


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
    "get_method",
    "keep_freed_memory",
    "list_layers",
    "list_methods",
    "method_info",
    "plot_concepts",
    "register_method",
]
