"""Finding target layers: by module, by dotted name, or automatically.

A layer is a module *and a call*: a module that runs more than once in one forward pass
(the default model's shared ``_swish`` runs at the stem and at the head) has one output
per call. ``"name"`` means the module's **last** call in the forward pass, ``"name@k"``
its call ``k`` (0-based; negative counts from the end). The automatic choice
(:func:`auto_layer`) is the last call whose output is a grid of the image, in any layout
of :mod:`sacam.tokens`, with the input's batch size, changing with the image and not the
model's output itself: for the default model, the head's activation ``_swish@1``
(1280×7×7); for a ViT, the input of its last attention.

Which modules run, how often, with which output shapes and layouts, is learnt from the
probe (:func:`probe`): two forward passes under ``torch.inference_mode()``, cached per
model and input shape (an exported program may fix the batch size).
"""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ._autoprobe import NoiseSpec, SeenForward, record_forward, unfit_calls
from ._locks import model_lock
from .errors import LayerError
from .tokens import Layout, Resolved, WithLayout, layout_candidates, resolve_layouts

LayerLike = nn.Module | str | WithLayout
LayersLike = None | LayerLike | Sequence[LayerLike]


@dataclass(frozen=True)
class LayerRef:
    """One target layer: a module, which of its calls in a forward pass, its output's layout."""

    module: nn.Module
    name: str
    call: int  # absolute, 0-based
    n_calls: int
    layout: Resolved = None

    @property
    def label(self) -> str:
        """Name used in results: ``name``, or ``name@call`` for modules run several times."""
        return self.name if self.n_calls == 1 else f"{self.name}@{self.call}"


@dataclass(frozen=True)
class ProbeRecord:
    """What one probe forward saw: (name, call, output shape) in completion order.

    ``layouts`` (parallel to ``order``) is each output's layout
    (:func:`sacam.tokens.resolve_layouts`); :meth:`unfit` maps the calls the automatic
    choice skips to the reason (:func:`sacam._autoprobe.unfit_calls`), from a second pass
    run the first time it is asked for.
    """

    order: tuple[tuple[str, int, tuple[int, ...] | None], ...]
    calls: dict[str, int]
    input_shape: tuple[int, ...] = ()
    layouts: tuple[Resolved, ...] = ()
    first: SeenForward | None = None
    noise: NoiseSpec | None = None
    _unfit: dict[str, dict[int, str]] = field(default_factory=dict)

    def unfit(self, model: nn.Module) -> dict[int, str]:
        """The calls the automatic choice skips (the probe's second pass, run once)."""
        if "calls" not in self._unfit:
            if self.first is None or self.noise is None:
                return {}
            with model_lock(model):
                flags = [(m, m.training) for m in model.modules()]
                try:
                    model.eval()
                    self._unfit["calls"] = unfit_calls(model, self.noise, self.first, self.layouts)
                finally:
                    for m, training in flags:
                        m.training = training
        return self._unfit["calls"]

    def index(self, name: str, call: int) -> int | None:
        """Position of ``(name, call)`` in ``order``, or ``None``."""
        for i, (n, c, _) in enumerate(self.order):
            if n == name and c == call:
                return i
        return None

    def layout(self, name: str, call: int) -> Resolved:
        """The layout of ``(name, call)``'s output (``None`` if unknown)."""
        i = self.index(name, call)
        return self.layouts[i] if i is not None and i < len(self.layouts) else None


_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ProbeRecord]] = (
    weakref.WeakKeyDictionary()
)


def probe(model: nn.Module, images: torch.Tensor) -> ProbeRecord:
    """Run (or reuse) the probe: every module call, its output shape and layout.

    One forward pass of ``images``, cached per model and input shape; the automatic layer
    choice adds a second one, of a fixed noise image of the same shape, which tells which
    outputs depend on the image (:meth:`ProbeRecord.unfit`).
    """
    with model_lock(model):
        return _probe_locked(model, images)


def _probe_locked(model: nn.Module, images: torch.Tensor) -> ProbeRecord:
    key = (tuple(images.shape), images.dtype, str(images.device), _structure_key(model))
    per_model = _PROBES.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()  # a probe must not update batch-norm statistics
        seen = record_forward(model, images)
    finally:
        for m, training in flags:
            m.training = training
    seen.output = None  # the record keeps shapes and samples, not tensors
    modules = dict(model.named_modules())
    layouts: tuple[Resolved, ...] = ()
    if images.ndim == 4:
        calls = [(modules[n], s) for n, _, s in seen.order]
        layouts = tuple(resolve_layouts(calls, tuple(images.shape)))
    noise = NoiseSpec.like(images)
    record = ProbeRecord(seen.order, seen.calls, tuple(images.shape), layouts, seen, noise)
    per_model[key] = record
    return record


def _structure_key(model: nn.Module) -> int:
    return hash(tuple(id(m) for m in model.modules()))


def auto_layer(model: nn.Module, record: ProbeRecord, ndim: int = 4) -> LayerRef:
    """The layer a user would pick: the last call whose output is a grid of the image.

    ``ndim`` is the input's: 4 for images, 5 for volumes ``(B, C, T, H, W)``. A candidate
    is a ``ndim``-D output of spatial size above 1 (for images: a grid in any layout of
    :mod:`sacam.tokens`) that has the input's batch size, changes with the image, is not
    the model's output itself (up to resizing) and, for token and channel-last outputs,
    reaches the output through its grid. Among token and channel-last outputs a
    normalisation or block output is preferred to a projection (``nn.Linear``) inside a
    block.
    """
    modules = dict(model.named_modules())
    fallback: int | None = None
    unfit = record.unfit(model)
    for i in reversed(range(len(record.order))):
        name, call, shape = record.order[i]
        if i in unfit or not _is_grid(record, i, ndim):
            continue
        layout = record.layouts[i] if ndim == 4 else None
        if isinstance(layout, Layout) and layout.kind != "channels_first":
            if isinstance(modules[name], nn.Linear):
                fallback = i if fallback is None else fallback
                continue
        return _ref(modules, record, i)
    if fallback is not None:
        return _ref(modules, record, fallback)
    if ndim != 4:
        raise LayerError(
            f"found no layer with a {ndim}-D output of spatial size above 1 to explain; pass "
            "layer= (a module or its dotted name)"
        )
    raise LayerError(
        "found no layer whose output is a grid of the image to explain; pass layer= (a "
        "module or its dotted name) and, for outputs sacam cannot read as (B, C, h, w), a "
        "reshape_transform"
    )


def _is_grid(record: ProbeRecord, i: int, ndim: int) -> bool:
    shape = record.order[i][2]
    if shape is None:
        return False
    if ndim != 4:
        return len(shape) == ndim and math.prod(shape[2:]) > 1
    layout = record.layouts[i]
    if layout is None:
        return False
    grids = [layout.grid] if isinstance(layout, Layout) else [c.grid for c in layout]
    return any(math.prod(g) > 1 for g in grids)


def _ref(modules: dict[str, nn.Module], record: ProbeRecord, i: int) -> LayerRef:
    name, call, _ = record.order[i]
    layout = record.layouts[i] if i < len(record.layouts) else None
    return LayerRef(modules[name], name, call, record.calls[name], layout)


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
    if isinstance(item, WithLayout):
        ref = _resolve_one(model, item.layer, record)
        return replace(ref, layout=_given_layout(ref, item, record))
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
        raise LayerError(
            f"a layer must be a module, a dotted name or sacam.tokens.with_layout(...), got "
            f"{type(item).__name__}"
        )
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
    return LayerRef(module, name, call, n_calls, record.layout(name, call))


def _given_layout(ref: LayerRef, given: WithLayout, record: ProbeRecord) -> Layout:
    """The layout ``given`` names, with its grid read from the output and the input size."""
    i = record.index(ref.name, ref.call)
    shape = record.order[i][2] if i is not None else None
    if shape is None or len(record.input_shape) != 4:
        raise LayerError(f"layer {ref.label!r} has no tensor output to lay out as {given.kind}")
    wanted = {"tokens": 3, "channels_last": 4, "channels_first": 4}[given.kind]
    if len(shape) != wanted:
        raise LayerError(
            f"layer {ref.label!r} outputs shape {shape}, which cannot be {given.kind} "
            f"(a {wanted}-D output)"
        )
    if given.kind == "channels_first":
        return Layout("channels_first", (shape[2], shape[3]))
    if given.kind == "channels_last":
        return Layout("channels_last", (shape[1], shape[2]))
    size = (record.input_shape[2], record.input_shape[3])
    cands = [
        c
        for c in layout_candidates(shape, size)
        if given.prefix_tokens is None or c.prefix_tokens == given.prefix_tokens
    ]
    if len(cands) != 1:
        found = ", ".join(c.describe() for c in cands) or "none"
        raise LayerError(
            f"layer {ref.label!r} outputs {shape[1]} tokens for a {size[0]}×{size[1]} input; "
            f"the token grids that fit are: {found}. Pass the prefix count (prefix_tokens=) "
            "or a reshape_transform (sacam.transforms.vit_reshape_transform(h, w, k))"
        )
    return cands[0]


def ambiguity_message(ref: LayerRef) -> str:
    """The error for a layer whose output reads as several layouts (``ref.layout`` a tuple)."""
    cands = ref.layout if isinstance(ref.layout, tuple) else ()
    tokens = [c for c in cands if c.kind == "tokens"]
    example = (
        f"with_layout({ref.label!r}, 'tokens', prefix_tokens={tokens[0].prefix_tokens})"
        if tokens
        else f"with_layout({ref.label!r}, {cands[0].kind!r})"
        if cands
        else f"with_layout({ref.label!r}, 'channels_first')"
    )
    return (
        f"the output of layer {ref.label!r} reads as several layouts: "
        f"{'; '.join(c.describe() for c in cands)}. sacam does not guess: pass "
        f"layer=sacam.tokens.{example} (or a reshape_transform)"
    )


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
