"""Deep Feature Factorization (Collins et al., ECCV 2018): concepts found by NMF of a layer.

:func:`concepts` factorises a layer's activations over a batch into ``n_components``
concept vectors and their spatial maps; :func:`sacam.viz.plot_concepts` draws them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._hooks import Capture, check_images, model_guard
from .._layers import LayersLike, probe, resolve_layers
from ..errors import LayerError, MethodError
from ..explanation import normalize_maps
from ._options import check_count, check_seed

__all__ = ["Concepts", "concepts", "find_classifier"]

DFF_URL = "https://arxiv.org/abs/1806.10206"
Classifier = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Concepts:
    """What :func:`concepts` found.

    Attributes:
        maps: ``(B, n, H, W)``: where each concept is in each image, every map min-max
            normalised to [0, 1] on its own (``(B, n, h, w)`` when not upsampled).
        vectors: ``(n, K)``: each concept's activation vector in the layer's channels.
        scores: ``(n, classes)`` softmax of the classifier on each concept vector, or
            ``None`` without a classifier.
        top_classes: ``(n, top_k)`` class indices by decreasing score (``None`` likewise).
        top_scores: ``(n, top_k)`` their softmax scores.
        layer: the factorised layer's label.
    """

    maps: torch.Tensor
    vectors: torch.Tensor
    scores: torch.Tensor | None
    top_classes: torch.Tensor | None
    top_scores: torch.Tensor | None
    layer: str


def find_classifier(model: nn.Module, channels: int) -> nn.Linear | None:
    """The model's last ``nn.Linear`` taking ``channels`` inputs (the head after pooling), or None.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(8, 4))
        >>> find_classifier(net, 8) is net[3], find_classifier(net, 5)
        (True, None)
    """
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
    return found[-1] if found else None


def _nmf(matrix: np.ndarray, n: int, seed: int, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's NMF ``X ≈ W H`` with random initialisation (as pytorch-grad-cam)."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    model = NMF(n_components=n, init="random", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        w = model.fit_transform(matrix)
    if any(issubclass(c.category, ConvergenceWarning) for c in caught):
        warnings.warn(
            f"NMF did not converge in max_iter={max_iter} iterations: the concepts are "
            "approximate; raise max_iter",
            stacklevel=3,
        )
    return w, model.components_


def _activations(
    model: nn.Module, images: torch.Tensor, layer: LayersLike, reshape: Classifier | None
) -> tuple[torch.Tensor, str]:
    with model_guard(model):
        refs = resolve_layers(model, layer, probe(model, images))
        if len(refs) != 1:
            raise LayerError("concepts factorise one layer: pass a single layer")
        with Capture(refs, with_grad=False) as cap, torch.inference_mode():
            model(images)
        if refs[0].label not in cap.stored:
            raise LayerError(f"layer {refs[0].label!r} did not run in this forward pass")
        acts = cap.stored[refs[0].label].clone()
    acts = reshape(acts) if reshape is not None else acts
    if acts.ndim != 4:
        raise LayerError(
            f"layer {refs[0].label!r} outputs shape {tuple(acts.shape)}, not (B, K, h, w): pick "
            "a convolutional layer, or pass reshape_transform for token outputs"
        )
    return acts, refs[0].label


def concepts(
    model: nn.Module,
    images: torch.Tensor,
    n_components: int = 5,
    layer: LayersLike = None,
    *,
    classifier: Classifier | nn.Module | str | None = "auto",
    top_k: int = 2,
    upsample: bool = True,
    reshape_transform: Classifier | None = None,
    seed: int = 0,
    max_iter: int = 200,
) -> Concepts:
    r"""Deep Feature Factorization (Collins et al., ECCV 2018, https://arxiv.org/abs/1806.10206).

    The layer's activations over the batch form a ``(K, B·h·w)`` matrix ``A`` (a column
    per position of every image). Each channel's minimum ``m_k`` is subtracted (NMF needs
    non-negative entries) and non-negative matrix factorisation gives
    ``A - m ≈ W H`` with ``W`` ``(K, n)`` and ``H`` ``(n, B·h·w)``: column ``j`` of
    ``W + m`` is concept ``j``'s vector in the layer's channels, row ``j`` of ``H``
    reshaped to ``(B, h, w)`` its maps (min-max normalised per image and concept,
    upsampled bilinearly). The concepts are shared by the whole batch. With a
    classifier (by default the model's last ``nn.Linear`` taking ``K`` inputs, the head
    after global pooling: :func:`find_classifier`), each concept vector is classified:
    ``softmax(classifier(w_j))`` and its ``top_k`` classes. Same as pytorch-grad-cam
    1.5.7's ``DeepFeatureFactorization`` (scikit-learn's ``NMF(init="random",
    random_state=0)``, its defaults) with ``computation_on_concepts`` set to the head.

    Args:
        model: the network; left as it was (eval mode only during the call).
        images: ``(B, C, H, W)``, normalised as the model expects.
        n_components: number of concepts ``n``.
        layer: the layer to factorise (default: the engine's, the last 4-D layer).
        classifier: ``"auto"`` (find the head), a module or callable mapping ``(n, K)`` to
            ``(n, classes)``, or ``None`` (no class scores).
        top_k: classes kept per concept.
        upsample: maps at the input's size (else the layer's).
        reshape_transform: maps token outputs to ``(B, K, h, w)``.
        seed: NMF's ``random_state`` (its random initialisation).
        max_iter: NMF iterations (a warning says when it did not converge).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn(channels=8, classes=4)
        >>> c = sacam.concepts(net, torch.rand(2, 3, 16, 16), n_components=3, max_iter=2000)
        >>> c.maps.shape, c.vectors.shape, c.top_classes.shape
        (torch.Size([2, 3, 16, 16]), torch.Size([3, 8]), torch.Size([3, 2]))
    """
    check_count("n_components", n_components)
    check_count("top_k", top_k)
    check_count("max_iter", max_iter)
    check_seed(seed)
    images = check_images(images, model)
    acts, label = _activations(model, images, layer, reshape_transform)
    vectors, maps = _factorise(acts, n_components, seed, max_iter)
    maps = _normalised(maps, tuple(images.shape[-2:]) if upsample else None)
    head = find_classifier(model, acts.shape[1]) if classifier == "auto" else classifier
    return Concepts(maps, vectors, *_classify(model, head, vectors, top_k), label)


def _factorise(
    acts: torch.Tensor, n: int, seed: int, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """NMF of ``(B, K, h, w)`` activations: concept vectors ``(n, K)``, raw maps ``(B, n, h, w)``.

    Each channel's minimum is subtracted before the factorisation and added back to the
    vectors; the maps are float32 on the activations' device.
    """
    b, k, h, w = acts.shape
    dtype = torch.float64 if acts.dtype == torch.float64 else torch.float32  # as the layer
    matrix = torch.nan_to_num(acts.detach()).transpose(0, 1).reshape(k, -1).to("cpu", dtype).numpy()
    offset = matrix.min(axis=1, keepdims=True)
    w_mat, h_mat = _nmf(matrix - offset, n, seed, max_iter)
    vectors = torch.from_numpy(w_mat + offset).T.to(device=acts.device, dtype=acts.dtype)
    maps = torch.from_numpy(h_mat).reshape(n, b, h, w).transpose(0, 1)
    return vectors, maps.to(device=acts.device, dtype=torch.float32)


def _normalised(maps: torch.Tensor, size: tuple[int, ...] | None) -> torch.Tensor:
    """``(B, n, h, w)`` maps upsampled bilinearly to ``size`` (if given), each normalised."""
    if size is not None and tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return normalize_maps(maps.flatten(0, 1))[0].view_as(maps)


Maybe = torch.Tensor | None


def _classify(
    model: nn.Module, head: object, vectors: torch.Tensor, top_k: int
) -> tuple[Maybe, Maybe, Maybe]:
    """Softmax scores of the concept vectors, their top classes and scores (or Nones)."""
    if head is None:
        return None, None, None
    if not callable(head):
        raise MethodError(f"classifier must be 'auto', None or callable, got {head!r}")
    with model_guard(model), torch.inference_mode():
        logits = head(vectors)
    scores = torch.softmax(logits.float(), dim=1).clone()
    top = scores.topk(min(top_k, scores.shape[1]), dim=1)
    return scores, top.indices, top.values
