"""Finding target layers: by module, by dotted name, or automatically.

A layer is a module *and a call*: a module that runs more than once in one forward pass
(the default model's shared ``_swish`` runs at the stem and at the head) has one output
per call. ``"name"`` means the module's **last** call in the forward pass, ``"name@k"``
its call ``k`` (0-based; negative counts from the end). The automatic choice is the last
(module, call) to finish whose output is 4-D with a spatial size above 1, the root model
excluded: for the default model, the head's activation ``_swish@1`` (1280×7×7).

Which modules run, how often, and with which output shapes is learnt from one probe
forward pass of the batch under ``torch.inference_mode()``; the result is cached per
model and input shape (an exported program may fix the batch size).
"""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._locks import model_lock, this_thread_only
from .errors import LayerError

LayerLike = nn.Module | str
LayersLike = None | LayerLike | Sequence[LayerLike]


@dataclass(frozen=True)
class LayerRef:
    """One target layer: a module and which of its calls in a forward pass."""

    module: nn.Module
    name: str
    call: int  # absolute, 0-based
    n_calls: int

    @property
    def label(self) -> str:
        """Name used in results: ``name``, or ``name@call`` for modules run several times."""
        return self.name if self.n_calls == 1 else f"{self.name}@{self.call}"


@dataclass(frozen=True)
class ProbeRecord:
    """What one probe forward saw: (name, call, output shape) in completion order."""

    order: tuple[tuple[str, int, tuple[int, ...] | None], ...]
    calls: dict[str, int]


_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ProbeRecord]] = (
    weakref.WeakKeyDictionary()
)


def probe(model: nn.Module, images: torch.Tensor) -> ProbeRecord:
    """Run (or reuse) one probe forward that records every module call and output shape."""
    with model_lock(model):
        return _probe_locked(model, images)


def _probe_locked(model: nn.Module, images: torch.Tensor) -> ProbeRecord:
    key = (tuple(images.shape), images.dtype, str(images.device), _structure_key(model))
    per_model = _PROBES.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    names = {m: n for n, m in model.named_modules() if n}
    order: list[tuple[str, int, tuple[int, ...] | None]] = []
    calls: dict[str, int] = {}

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        name = names[module]
        k = calls.get(name, 0)
        calls[name] = k + 1
        order.append((name, k, tuple(out.shape) if isinstance(out, torch.Tensor) else None))

    handles = []
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()  # a probe must not update batch-norm statistics
        for module in names:
            handles.append(module.register_forward_hook(this_thread_only(hook)))
        with torch.inference_mode():
            model(images)
    finally:
        for h in handles:
            h.remove()
        for m, training in flags:
            m.training = training
    record = ProbeRecord(tuple(order), calls)
    per_model[key] = record
    return record


def _structure_key(model: nn.Module) -> int:
    return hash(tuple(id(m) for m in model.modules()))


def auto_layer(model: nn.Module, record: ProbeRecord, ndim: int = 4) -> LayerRef:
    """The last (module, call) whose output is ``ndim``-D with spatial size above 1.

    ``ndim`` is the input's: 4 for images, 5 for volumes ``(B, C, T, H, W)``.
    """
    modules = dict(model.named_modules())
    for name, call, shape in reversed(record.order):
        if shape is not None and len(shape) == ndim and math.prod(shape[2:]) > 1:
            return LayerRef(modules[name], name, call, record.calls[name])
    raise LayerError(
        f"found no layer with a {ndim}-D output of spatial size above 1 to explain; pass "
        "layer= (a module or its dotted name) and, for token outputs, a reshape_transform"
    )


def resolve_layers(
    model: nn.Module, layer: LayersLike, record: ProbeRecord, *, ndim: int = 4
) -> list[LayerRef]:
    """Resolve ``layer`` (None, a module, a dotted name, or a list of them) to LayerRefs.

    ``ndim`` (the input's, 4 or 5) sets which outputs the automatic choice looks for.
    """
    if layer is None:
        return [auto_layer(model, record, ndim)]
    items: list[LayerLike] = list(layer) if isinstance(layer, list | tuple) else [layer]  # type: ignore[list-item]
    if not items:
        raise LayerError("layer is an empty list: pass None, a module or a dotted name")
    refs = [_resolve_one(model, item, record) for item in items]
    labels = [r.label for r in refs]
    if len(set(labels)) != len(labels):
        raise LayerError(f"the same layer is given twice: {labels}")
    return refs


def _resolve_one(model: nn.Module, item: LayerLike, record: ProbeRecord) -> LayerRef:
    names = {m: n for n, m in model.named_modules()}
    if isinstance(item, nn.Module):
        if item not in names:
            raise LayerError(
                f"the layer module {type(item).__name__} is not a submodule of this model"
            )
        name, call_spec = names[item], -1
        if name == "":
            raise LayerError("the target layer cannot be the model itself: pick a submodule")
    elif isinstance(item, str):
        name, _, call_text = item.partition("@")
        try:
            call_spec = int(call_text) if call_text else -1
        except ValueError:
            raise LayerError(
                f"bad call index in layer {item!r}: use 'name@k' with k an int"
            ) from None
        try:
            model.get_submodule(name) if name else None
        except AttributeError:
            raise LayerError(_unknown_layer_message(name, record)) from None
        if not name:
            raise LayerError("the target layer cannot be the model itself: pick a submodule")
    else:
        raise LayerError(f"a layer must be a module or a dotted name, got {type(item).__name__}")
    module = model.get_submodule(name)
    n_calls = record.calls.get(name, 0)
    if n_calls == 0:
        raise LayerError(
            f"layer {name!r} exists but does not run in the forward pass, so it has no "
            f"output to explain; layers that run include: {_some_layers(record)}"
        )
    call = call_spec if call_spec >= 0 else n_calls + call_spec
    if not 0 <= call < n_calls:
        raise LayerError(
            f"layer {name!r} runs {n_calls} time(s) per forward pass; call index {call_spec} "
            f"is out of range (use 0..{n_calls - 1} or a negative index)"
        )
    return LayerRef(module, name, call, n_calls)


def _some_layers(record: ProbeRecord, limit: int = 12) -> str:
    spatial = [n for n, _, s in record.order if s is not None and len(s) >= 3]
    unique = list(dict.fromkeys(spatial))
    shown = unique[-limit:]
    more = (
        f" (and {len(unique) - limit} earlier; see sacam.list_layers)"
        if len(unique) > limit
        else ""
    )
    return ", ".join(shown) + more


def _unknown_layer_message(name: str, record: ProbeRecord) -> str:
    known = list(record.calls)
    close = difflib.get_close_matches(name, known, n=5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"no layer named {name!r} in this model; {hint}"
        f"layers with spatial outputs: {_some_layers(record)}"
    )


def list_layers(model: nn.Module, images: torch.Tensor) -> list[tuple[str, tuple[int, ...] | None]]:
    """List every (layer label, output shape) in forward order, for choosing a target layer.

    Args:
        model: the model.
        images: an example batch.

    Returns:
        ``(label, shape)`` pairs in the order the calls finish; a module run several times
        appears once per call as ``name@k``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> list_layers(net, torch.rand(1, 3, 8, 8))
        [('0', (1, 4, 6, 6)), ('1', (1, 4, 6, 6))]
    """
    record = probe(model, images)
    out = []
    for name, call, shape in record.order:
        label = name if record.calls[name] == 1 else f"{name}@{call}"
        out.append((label, shape))
    return out
