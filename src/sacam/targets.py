"""Targets: what score a CAM explains.

A target is any callable that takes the model output (the whole batch) and returns one
score per sample, shape ``(B,)``. This one idea serves classification, segmentation and
anything else whose output can be reduced to a scalar per image. The helpers below cover
the common cases; :func:`resolve_targets` turns what a user passes (``None``, an ``int``,
one ``int`` per sample, or callables) into a single batch callable.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import ModelError, TargetError

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
TargetsLike = None | int | Sequence[int] | torch.Tensor | ScoreFn | Sequence[ScoreFn]


@dataclass(frozen=True)
class ClassifierOutputTarget:
    """Logit of one class for every sample: ``output[:, category]``.

    Example:
        >>> import torch
        >>> ClassifierOutputTarget(1)(torch.tensor([[0.0, 2.0], [1.0, 3.0]]))
        tensor([2., 3.])
    """

    category: int

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Return the logit of ``category`` for each sample."""
        return output[:, self.category]


@dataclass(frozen=True)
class ClassifierOutputSoftmaxTarget:
    """Softmax probability of one class for every sample."""

    category: int

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Return the softmax probability of ``category`` for each sample."""
        return torch.softmax(output, dim=1)[:, self.category]


@dataclass(frozen=True)
class PerSampleClassTarget:
    """One class per sample: ``output[b, categories[b]]`` (logits)."""

    categories: tuple[int, ...]

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Return the logit of each sample's own class."""
        idx = torch.as_tensor(self.categories, device=output.device, dtype=torch.long)
        return output.gather(1, idx[:, None])[:, 0]


@dataclass(frozen=True)
class SemanticSegmentationTarget:
    """Sum of one category's scores over a region, for (B, C, H, W) segmentation outputs.

    ``mask`` is an (H, W) tensor of weights (usually 0/1) on the output grid.
    """

    category: int
    mask: torch.Tensor

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Return the masked sum of the category's score map for each sample."""
        if output.ndim != 4:
            raise TargetError(
                f"SemanticSegmentationTarget needs a (B, C, H, W) output, got {tuple(output.shape)}"
            )
        mask = self.mask.to(device=output.device, dtype=output.dtype)
        return (output[:, self.category] * mask).flatten(1).sum(1)


@dataclass(frozen=True, eq=False)
class InstanceMaskTarget:
    """Sum of one class's scores over the pixels of one instance, for ``(B, K, H, W)`` outputs.

    ``mask`` is a boolean ``(H, W)`` mask on the output grid (the same instance pixels for
    every image) or ``(B, H, W)`` (one instance per image), e.g. an instance mask of a
    segmentation or detection dataset, resized to the output's size.

    Example:
        >>> import torch
        >>> out = torch.arange(8.0).view(1, 2, 2, 2)  # class 1 scores [[4, 5], [6, 7]]
        >>> InstanceMaskTarget(1, torch.tensor([[True, False], [False, True]]))(out)
        tensor([11.])
    """

    category: int
    mask: torch.Tensor

    def __post_init__(self) -> None:
        """Check the mask: boolean, 2-D or 3-D, not empty."""
        m = self.mask
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.ndim not in (2, 3):
            raise TargetError(
                "InstanceMaskTarget needs a boolean mask (H, W) or (B, H, W), got "
                f"{type(m).__name__ if not isinstance(m, torch.Tensor) else (m.dtype, m.ndim)}"
            )
        if not bool(m.flatten(-2).any(-1).all()):
            raise TargetError("InstanceMaskTarget's mask is empty: it selects no pixel")

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Return, per sample, the sum of ``category``'s scores over the instance's pixels."""
        if output.ndim != 4 or tuple(self.mask.shape[-2:]) != tuple(output.shape[-2:]):
            raise TargetError(
                f"InstanceMaskTarget's mask {tuple(self.mask.shape)} does not fit the output "
                f"{tuple(output.shape)}: it needs a (B, K, H, W) output and a mask of its "
                "(H, W) (resize the mask to the output's size)"
            )
        if self.mask.ndim == 3 and self.mask.shape[0] != output.shape[0]:
            raise TargetError(
                f"InstanceMaskTarget has {self.mask.shape[0]} masks for a batch of "
                f"{output.shape[0]} images"
            )
        mask = self.mask.to(device=output.device, dtype=output.dtype)
        return (output[:, self.category] * mask).flatten(1).sum(1)


def parse_class(
    text: str, class_names: Sequence[str], n_classes: int | None = None, *, what: str = "target"
) -> int:
    """A class index from what a user typed: an index, or a class name (any case).

    Args:
        text: the index or the name; surrounding spaces are ignored.
        class_names: the model's class names (empty when it has none: indices only).
        n_classes: the number of classes, for the range check (default: the number of
            names; no check when both are unknown).
        what: how the user gave it, to start the messages (``"--target"``, ``"target"``).

    Raises:
        TargetError: neither an index nor a known name, or an index out of range.

    Example:
        >>> parse_class(" Tabby ", ["dog", "tabby"]), parse_class("0", ["dog", "tabby"])
        (1, 0)
    """
    text = text.strip()
    try:
        index = int(text)
    except ValueError:
        matches = [i for i, name in enumerate(class_names) if name.lower() == text.lower()]
        if not matches:
            raise TargetError(
                f"{what} {text!r} is neither a class index nor a class name"
            ) from None
        return matches[0]
    n = n_classes or len(class_names)
    if n and not 0 <= index < n:
        raise TargetError(f"{what} {index} is out of range: the model has {n} classes (0..{n - 1})")
    return index


def class_indices(targets: TargetsLike, output: torch.Tensor) -> torch.Tensor | None:
    """Return the class index of each sample, or ``None`` when targets are callables.

    ``None`` targets mean the top-1 class of each sample (needs a 2-D output). Class
    indices given on the host (ints, or a CPU tensor) are range-checked there, so a model
    on an accelerator is not synchronised for the check; a tensor on the accelerator is
    checked where it lies (that reads it back, once).
    """
    idx, _ = _class_indices(targets, output)
    return idx


def _class_indices(
    targets: TargetsLike, output: torch.Tensor
) -> tuple[torch.Tensor | None, tuple[int, ...] | None]:
    """``(indices on the output's device, the same as host ints where known)``."""
    if isinstance(targets, ClassifierOutputTarget | ClassifierOutputSoftmaxTarget):
        targets = targets.category
    if isinstance(targets, PerSampleClassTarget):
        targets = list(targets.categories)
    if targets is None:
        if output.ndim != 2:
            raise TargetError(
                f"the model output has shape {tuple(output.shape)}, so there is no top-1 class "
                "to explain"
                + (_pixels(output) or ": pass targets (a callable returning one score per sample)")
            )
        return output.argmax(dim=1), None  # in range by construction: nothing to read back
    batch = output.shape[0]
    if isinstance(targets, bool):
        raise TargetError("a target must be an int class index or a callable, not a bool")
    if isinstance(targets, numbers.Integral):
        host = torch.full((batch,), int(targets), dtype=torch.long)
    elif isinstance(targets, torch.Tensor):
        if targets.dtype.is_floating_point or targets.ndim > 1:
            raise TargetError("a target tensor must hold one integer class index per sample")
        host = targets.detach().reshape(-1).to(dtype=torch.long)
        if host.numel() == 1:
            host = host.expand(batch)
    elif isinstance(targets, Sequence) and all(
        isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in targets
    ):
        host = torch.as_tensor(list(targets), dtype=torch.long)
    else:
        return None, None
    if host.numel() != batch:
        raise TargetError(f"got {host.numel()} target classes for a batch of {batch} images")
    if output.ndim < 2:
        raise TargetError(f"class targets need an output with a class axis, got {output.ndim}-D")
    if output.ndim > 2:
        raise TargetError(
            f"a class index is a target for (B, classes) outputs; this model outputs "
            f"{tuple(output.shape)}, a score per class and position, and a class index does "
            f"not say which positions to explain{_pixels(output)}"
        )
    values = tuple(int(i) for i in host.tolist())  # host ints: the check reads them back once
    n_classes = output.shape[1]
    bad = [i for i in values if not 0 <= i < n_classes]
    if bad:
        raise TargetError(
            f"target class {bad[0]} is out of range: the model has {n_classes} classes "
            f"(valid indices 0..{n_classes - 1})"
        )
    idx = host.to(device=output.device, non_blocking=True).clone()
    return idx, values


def _pixels(output: torch.Tensor) -> str:
    """For a segmentation output: the targets that name pixels (an error message's end)."""
    if output.ndim != 4:
        return ""
    return (
        ": pass targets=SemanticSegmentationTarget(class, mask) or "
        "InstanceMaskTarget(class, bool_mask) (sacam.targets) with an (H, W) mask of the "
        "output's size, or explain every predicted class with "
        "sacam.labels.explain_segmentation(model, images)"
    )


def resolve_targets(
    targets: TargetsLike, output: torch.Tensor
) -> tuple[ScoreFn, torch.Tensor | None]:
    """Turn user targets into one batch score function, plus class indices where known.

    Args:
        targets: ``None`` (top-1 per sample), an ``int`` (the same class for all), one
            ``int`` per sample (sequence or 1-D tensor), one callable mapping the batch
            output to ``(B,)`` scores, or one callable per sample (each gets the whole
            output and the sample's score is taken from its row).
        output: the model output for the batch (used for the top-1 class and checks).

    Returns:
        ``(score_fn, class_idx)``; ``class_idx`` is ``None`` for callable targets.

    Example:
        >>> import torch
        >>> fn, idx = resolve_targets(None, torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
        >>> idx.tolist(), fn(torch.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist()
        ([1, 0], [0.8999999761581421, 0.800000011920929])
    """
    if isinstance(targets, ClassifierOutputSoftmaxTarget):
        class_indices(targets, output)  # range check
        return targets, class_indices(targets, output)
    idx, values = _class_indices(targets, output)
    if idx is not None:
        if values is None:  # top-1 on the device: scored from the tensor, no read-back
            return _IndexTarget(idx), idx
        return PerSampleClassTarget(values), idx
    batch = output.shape[0]
    fn: ScoreFn
    if callable(targets):
        fn = targets
    elif isinstance(targets, Sequence) and all(callable(t) for t in targets):
        fns: list[ScoreFn] = [t for t in targets if callable(t)]
        if len(fns) != batch:
            raise TargetError(f"got {len(fns)} target callables for a batch of {batch} images")
        fn = PerSampleCallables(tuple(fns))
    else:
        raise TargetError(
            f"unsupported targets {targets!r}: pass None, an int class index, one int per "
            "sample, or callables that map the model output to one score per sample"
        )
    return fn, None


@dataclass(frozen=True, eq=False)
class _IndexTarget:
    """:class:`PerSampleClassTarget` for classes held in a tensor (kept on its device)."""

    idx: torch.Tensor

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Return the logit of each sample's own class."""
        idx = self.idx
        if idx.is_inference() and not torch.is_inference_mode_enabled():
            idx = idx.clone()  # made by an inference-mode pass; autograd cannot save it
        return output.gather(1, idx.to(output.device)[:, None])[:, 0]


@dataclass(frozen=True)
class PerSampleCallables:
    """One score callable per sample; each gets its own sample's output row ``(1, ...)``."""

    fns: tuple[ScoreFn, ...]

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Row ``b`` scored by callable ``b``."""
        return torch.stack([_one_score(f(output[b : b + 1])) for b, f in enumerate(self.fns)])

    def for_sample(self, b: int) -> ScoreFn:
        """A batch score function that applies sample ``b``'s callable to every row."""
        f = self.fns[b]
        return lambda out: torch.stack([_one_score(f(out[i : i + 1])) for i in range(len(out))])


def _one_score(value: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TargetError("a per-sample target callable must return a single score")
    return value.reshape(())


def scored_output(
    model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, targets: TargetsLike
) -> tuple[torch.Tensor, ScoreFn, torch.Tensor | None, torch.Tensor]:
    """One forward pass without autograd, scored for the targets.

    Runs ``model`` in inference mode, resolves ``targets`` (:func:`resolve_targets`) and
    scores them (:func:`evaluate_scores`).

    Returns:
        ``(output, score_fn, class_idx, scores)``, the tensors cloned out of inference mode
        so that the caller can use them as plain tensors (``class_idx`` is ``None`` for
        callable targets).

    Example:
        >>> import torch
        >>> out, fn, idx, scores = scored_output(torch.nn.Identity(), torch.eye(2), None)
        >>> idx.tolist(), scores.tolist(), out.is_inference()
        ([0, 1], [1.0, 1.0], False)
    """
    with torch.inference_mode():
        output = model(images)
        score_fn, class_idx = resolve_targets(targets, output)
        scores = evaluate_scores(score_fn, output)
    class_idx = class_idx.clone() if class_idx is not None else None
    return output.clone(), score_fn, class_idx, scores.clone()


def evaluate_scores(score_fn: ScoreFn, output: torch.Tensor) -> torch.Tensor:
    """Apply a score function and check it returns one finite-shaped score per sample.

    The finiteness check is the one place a call reads a value back from an accelerator
    (it must, to raise a clear error); it also catches NaN or infinite inputs there, which
    :func:`sacam._hooks.check_images` checks on CPU tensors only.
    """
    scores = score_fn(output)
    batch = output.shape[0]
    if not isinstance(scores, torch.Tensor) or scores.shape != (batch,):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TargetError(
            f"a target callable must return one score per sample, shape ({batch},), got {shape}"
        )
    if not torch.isfinite(scores.detach()).all():
        raise ModelError(
            "the model's target scores contain NaN or infinite values, so no map can be "
            "computed: check the model and its inputs (NaN or infinite pixels?)"
        )
    return scores
