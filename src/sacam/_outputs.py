"""The one place where a model's output becomes the tensor sacam explains (the logits).

Many models do not return a plain tensor: a tuple or list (logits first, auxiliary
outputs after), a dict (torchvision's detection and segmentation models, custom heads),
or an object with a ``.logits`` field (Hugging Face ``transformers`` models). sacam reads
them all the same way, here:

1. ``output_transform`` given: ``output_transform(output)``, which must return a tensor;
2. a tensor: itself;
3. an object with a tensor attribute ``logits`` (a Hugging Face ``ModelOutput``, a named
   tuple or a dataclass with a ``logits`` field): ``output.logits``;
4. a mapping: its ``"logits"`` entry, else its only tensor value;
5. a tuple or list: its first element, if it is a tensor.

Anything else is refused with an error that names what the output holds and suggests
``output_transform=``.

What the logits mean (:func:`probabilities`): ``activation="softmax"`` (one class per
image, the default), ``"sigmoid"`` (independent labels, multi-label classifiers) or
``"none"`` (the output already holds probabilities). Without an explicit ``activation``,
sacam picks one only where it is certain: a one-logit output is a sigmoid (a binary
classifier), and an output that *is* the output of an ``nn.Sigmoid`` module (seen by a
forward hook on the first pass) holds probabilities; anything else is read as softmax.

The engine does not convert at every call site: it wraps the user's model once in
:class:`LogitsModel`, an ``nn.Module`` whose forward calls the user's model and converts
its output. The user's model is its child, not changed (no attribute set): forward hooks
on the user's submodules, sacam's own included, fire as usual, and the wrapper's
``modules()`` and ``parameters()`` are the user's plus none of its own. Locks and caches
keyed by model (:func:`sacam._locks.model_lock`, the tuning caches) look through the
wrapper with :func:`unwrap`, so a wrapper shares everything with the model it wraps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import nn

from .errors import TargetError

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "LogitsModel",
    "OutputTransform",
    "activation_of",
    "check_activation",
    "logits_model",
    "probabilities",
    "to_logits",
    "unwrap",
]

OutputTransform = Callable[[object], torch.Tensor]
Activation = Literal["softmax", "sigmoid", "none"]
ACTIVATIONS: tuple[Activation, ...] = ("softmax", "sigmoid", "none")

_HINT = (
    "pass output_transform= (a callable from the model's output to the (B, classes) tensor "
    "to explain), e.g. output_transform=lambda out: {example}"
)


def _describe(output: object) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {sorted(map(str, output))}"
    if isinstance(output, tuple | list):
        kinds = ", ".join(type(v).__name__ for v in output[:6])
        more = ", ..." if len(output) > 6 else ""
        return f"a {type(output).__name__} of ({kinds}{more})"
    return f"a {type(output).__name__}"


def to_logits(output: object, output_transform: OutputTransform | None = None) -> torch.Tensor:
    """The tensor to explain from a model's output (see the module doc for the rules).

    Args:
        output: whatever the model's forward returned.
        output_transform: a callable from that output to a tensor, or ``None`` for the
            default rules (tensor, ``.logits``, dict, tuple/list).

    Raises:
        TargetError: the output has no tensor to explain by the rules, or
            ``output_transform`` did not return a tensor.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[1.0, 2.0]])
        >>> to_logits((logits, torch.zeros(1))) is logits
        True
        >>> to_logits({"logits": logits, "aux": torch.ones(1)}) is logits
        True
        >>> to_logits({"a": 1.0}, lambda out: torch.tensor([[out["a"]]])).tolist()
        [[1.0]]
    """
    if output_transform is not None:
        out = output_transform(output)
        if not isinstance(out, torch.Tensor):
            raise TargetError(
                f"output_transform returned {type(out).__name__}, not a tensor: it must map "
                "the model's output to the (B, classes) tensor to explain"
            )
        return out
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        if "logits" in output and isinstance(output["logits"], torch.Tensor):
            return output["logits"]
        tensors = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    elif isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    example = "out.scores"
    if isinstance(output, Mapping):
        keys = [k for k, v in output.items() if isinstance(v, torch.Tensor)]
        example = f"out[{keys[0]!r}]" if keys else example
    elif isinstance(output, tuple | list):
        found = [i for i, v in enumerate(output) if isinstance(v, torch.Tensor)]
        example = f"out[{found[0]}]" if found else example
    raise TargetError(
        f"the model returned {_describe(output)}, and sacam cannot tell which tensor to "
        "explain (it takes a tensor, .logits, a dict's 'logits' entry or only tensor, or a "
        f"tuple's first element): {_HINT.format(example=example)}"
    )


def check_activation(activation: object) -> Activation | None:
    """``activation`` if it is ``None`` or one of :data:`ACTIVATIONS`, else a clear error."""
    if activation is None:
        return None
    for known in ACTIVATIONS:
        if activation == known:
            return known
    raise TargetError(
        f"activation must be 'softmax' (one class per image), 'sigmoid' (independent "
        f"labels) or 'none' (the output holds probabilities), got {activation!r}"
    )


class LogitsModel(nn.Module):
    """The user's model, with its output turned into logits by :func:`to_logits`.

    Args:
        model: the user's model (its child ``model``; left unchanged).
        output_transform: see :func:`to_logits`.
        activation: what the logits mean (see the module doc); ``None``: decided from
            the output (:func:`activation_of`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Pair(nn.Module):
        ...     def forward(self, x):
        ...         return x.sum(1), "aux"
        >>> LogitsModel(Pair())(torch.ones(1, 2, 3)).tolist()
        [[2.0, 2.0, 2.0]]
    """

    def __init__(
        self,
        model: nn.Module,
        output_transform: OutputTransform | None = None,
        activation: Activation | None = None,
    ) -> None:
        super().__init__()
        if output_transform is not None and not callable(output_transform):
            raise TargetError(
                f"output_transform must be a callable (model output -> tensor), got "
                f"{type(output_transform).__name__}"
            )
        self.model = model
        self.output_transform = output_transform
        self.activation = check_activation(activation)
        #: whether the output is an nn.Sigmoid's output (``None`` until the first forward)
        self.sigmoid_output: bool | None = None

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        """Run the user's model and return :func:`to_logits` of its output."""
        if self.sigmoid_output is not None or self.activation is not None:
            return to_logits(self.model(*args, **kwargs), self.output_transform)
        sigmoids = [m for m in self.model.modules() if isinstance(m, nn.Sigmoid)]
        seen: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in sigmoids]
        try:
            logits = to_logits(self.model(*args, **kwargs), self.output_transform)
        finally:
            for h in handles:
                h.remove()
        self.sigmoid_output = any(out is logits for out in seen)
        return logits


def activation_of(model: nn.Module, logits: torch.Tensor) -> Activation:
    """What ``logits`` of ``model`` mean: the explicit choice, else what is certain, else softmax.

    ``model`` is the engine's :class:`LogitsModel` (a plain module: softmax unless the
    output has one logit). See the module doc for the rules.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> plain = nn.Identity()
        >>> activation_of(plain, torch.zeros(2, 1)), activation_of(plain, torch.zeros(2, 5))
        ('sigmoid', 'softmax')
        >>> net = LogitsModel(nn.Sequential(nn.Linear(3, 4), nn.Sigmoid()))
        >>> activation_of(net, net(torch.zeros(1, 3)))
        'none'
    """
    if isinstance(model, LogitsModel):
        if model.activation is not None:
            return model.activation
        if model.sigmoid_output:
            return "none"
    if logits.ndim == 2 and logits.shape[1] == 1:
        return "sigmoid"
    return "softmax"


def probabilities(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, classes)`` (float32) of ``logits``, by :func:`activation_of`.

    Softmax over classes, an independent sigmoid per label, or the output as it is.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> probabilities(nn.Identity(), torch.tensor([[0.0]])).tolist()
        [[0.5]]
    """
    kind = activation_of(model, logits)
    if kind == "softmax":
        return torch.softmax(logits.float(), 1)
    if kind == "sigmoid":
        return torch.sigmoid(logits.float())
    return logits.float()


def logits_model(
    model: nn.Module,
    output_transform: OutputTransform | None = None,
    activation: Activation | None = None,
) -> LogitsModel:
    """``model`` wrapped in a :class:`LogitsModel` (a wrapper without options is reused)."""
    if isinstance(model, LogitsModel) and output_transform is None and activation is None:
        return model
    return LogitsModel(model, output_transform, activation)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any :class:`LogitsModel` wrappers (``model`` itself if none)."""
    while isinstance(model, LogitsModel):
        model = model.model
    return model
