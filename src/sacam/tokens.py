"""Layer layouts: how a layer's output lays out its grid, recognised from the model.

CAM methods work on maps ``(B, C, h, w)``. Transformer layers lay the same grid out in
other ways, and sacam recognises them at the layer's output, from the output's shape, the
input's size and, where it tells, the module that produced it:

- ``"channels_first"``: ``(B, C, h, w)``, a convolution's output, used as it is;
- ``"channels_last"``: ``(B, h, w, C)``, inside Swin and ConvNeXt blocks (an
  ``nn.LayerNorm`` over the last dimension, an ``nn.Linear`` on each position);
- ``"tokens"``: ``(B, P + h·w, C)``, ViT and DeiT blocks: ``P`` leading tokens (class,
  distillation or register tokens) and ``h·w`` patch tokens in row-major order.

A feature map's grid divides the input's size with one stride in both axes, so a grid
``(h, w)`` fits an input ``(H, W)`` when ``h`` and ``w`` are ``H / s`` and ``W / s``
rounded down or up for one integer stride ``s``. When several layouts fit (a
``(B, 8, 8, 8)`` output, or a token count that several prefix counts explain) and
neither the module nor the grids seen earlier in the forward pass settle it, sacam
refuses to guess: its error names the candidates, and :func:`with_layout` settles it.

The engine turns the layer's activations and gradients into maps with
:meth:`Layout.to_maps`, and the perturbation methods that replace the layer's output
(Recipro-CAM, Ablation-CAM) write their edited maps back with :meth:`Layout.from_maps`
(the prefix tokens keep their values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import LayerError

__all__ = ["Layout", "LayoutKind", "WithLayout", "fits_grid", "layout_candidates", "with_layout"]

LayoutKind = Literal["tokens", "channels_last", "channels_first"]
KINDS: tuple[LayoutKind, ...] = ("tokens", "channels_last", "channels_first")
MAX_PREFIX = 16  # class + distillation + register tokens, at most

_CHANNELS_FIRST_MODULES = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
)


@dataclass(frozen=True)
class Layout:
    """How one layer's output lays out its ``h × w`` grid (see the module doc).

    Example:
        >>> t = torch.arange(15.0).view(1, 5, 3)  # a class token and 2×2 patches
        >>> lay = Layout("tokens", (2, 2), prefix_tokens=1)
        >>> lay.to_maps(t).shape
        torch.Size([1, 3, 2, 2])
        >>> torch.equal(lay.from_maps(lay.to_maps(t), t), t)
        True
    """

    kind: LayoutKind
    grid: tuple[int, int]
    prefix_tokens: int = 0

    def describe(self) -> str:
        """The layout in words, e.g. ``tokens (B, 1 + 14·14, C)``."""
        h, w = self.grid
        if self.kind == "tokens":
            head = f"{self.prefix_tokens} + " if self.prefix_tokens else ""
            return f"tokens (B, {head}{h}·{w}, C)"
        if self.kind == "channels_last":
            return f"channels_last (B, {h}, {w}, C)"
        return f"channels_first (B, C, {h}, {w})"

    def to_maps(self, t: torch.Tensor) -> torch.Tensor:
        """The layer's output (or its gradient) as maps ``(B, C, h, w)``."""
        if self.kind == "channels_first":
            return t
        if self.kind == "channels_last":
            return t.permute(0, 3, 1, 2)
        b, _, c = t.shape
        h, w = self.grid
        return t[:, self.prefix_tokens :, :].reshape(b, h, w, c).permute(0, 3, 1, 2)

    def from_maps(self, maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Maps ``(m, C, h, w)`` back in the layer's layout; prefix tokens taken from ``like``.

        ``like`` is an output of the layer (batch 1 or ``m``).
        """
        if self.kind == "channels_first":
            return maps
        grid = maps.permute(0, 2, 3, 1)
        if self.kind == "channels_last":
            return grid
        m, c = maps.shape[:2]
        patches = grid.reshape(m, -1, c)
        if not self.prefix_tokens:
            return patches
        prefix = like[:, : self.prefix_tokens, :].to(maps.dtype).expand(m, -1, -1)
        return torch.cat([prefix, patches], dim=1)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """:meth:`to_maps`, so a layout serves as a ``reshape_transform``."""
        return self.to_maps(t)


@dataclass(frozen=True)
class WithLayout:
    """A target layer with the layout of its output given (see :func:`with_layout`)."""

    layer: nn.Module | str
    kind: LayoutKind
    prefix_tokens: int | None = None


def with_layout(
    layer: nn.Module | str, layout: LayoutKind, *, prefix_tokens: int | None = None
) -> WithLayout:
    """A target layer whose output layout you give, for ``layer=`` of any method.

    Use it where sacam reports that a layer's layout is ambiguous; the grid is still
    read from the output's shape and the input's size.

    Args:
        layer: a module or its dotted name (``"name@k"`` for a call).
        layout: ``"tokens"`` ``(B, P + h·w, C)``, ``"channels_last"`` ``(B, h, w, C)`` or
            ``"channels_first"`` ``(B, C, h, w)``.
        prefix_tokens: for ``"tokens"``: how many leading tokens are not patches (1 for
            a class token); ``None`` lets sacam find it.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        >>> layer = with_layout("1", "channels_first")
        >>> sacam.explain(net, torch.rand(1, 3, 8, 8), method="grad-cam", layer=layer).shape
        torch.Size([1, 8, 8])
    """
    if layout not in KINDS:
        raise LayerError(f"layout must be one of {', '.join(KINDS)}, got {layout!r}")
    if prefix_tokens is not None:
        if layout != "tokens":
            raise LayerError("prefix_tokens applies to layout='tokens' only")
        if not isinstance(prefix_tokens, int) or isinstance(prefix_tokens, bool):
            raise LayerError(f"prefix_tokens must be an int >= 0, got {prefix_tokens!r}")
        if prefix_tokens < 0:
            raise LayerError(f"prefix_tokens must be an int >= 0, got {prefix_tokens!r}")
    if not isinstance(layer, nn.Module | str):
        raise LayerError(f"with_layout takes a module or a dotted name, got {type(layer).__name__}")
    return WithLayout(layer, layout, prefix_tokens)


def fits_grid(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether a grid ``(h, w)`` divides an input ``size = (H, W)`` with one stride.

    True when, for one integer stride ``s``, ``h`` is ``H / s`` and ``w`` is ``W / s``,
    both rounded down or both rounded up.

    Example:
        >>> fits_grid(14, 14, (224, 224)), fits_grid(7, 10, (224, 320)), fits_grid(8, 7, (224, 224))
        (True, True, False)
    """
    big_h, big_w = size
    if h < 1 or w < 1 or h > big_h or w > big_w:
        return False
    for s in range(max(1, big_h // (h + 1)), big_h // max(1, h - 1) + 2):
        if (h, w) in ((big_h // s, big_w // s), (-(-big_h // s), -(-big_w // s))):
            return True
    return False


def layout_candidates(shape: tuple[int, ...], size: tuple[int, int]) -> list[Layout]:
    """Every layout whose grid fits the input ``size``, for an output of ``shape``.

    Example:
        >>> [c.describe() for c in layout_candidates((2, 197, 64), (224, 224))]
        ['tokens (B, 1 + 14·14, C)']
        >>> [c.describe() for c in layout_candidates((2, 50, 64), (224, 224))]
        ['tokens (B, 1 + 7·7, C)', 'tokens (B, 14 + 6·6, C)']
        >>> [c.kind for c in layout_candidates((2, 8, 8, 8), (64, 64))]
        ['channels_last', 'channels_first']
    """
    found: list[Layout] = []
    if len(shape) == 3:
        for p in range(min(MAX_PREFIX, shape[1] - 1) + 1):
            n = shape[1] - p
            for h in range(1, n + 1):
                if n % h == 0 and (h > 1 or n // h > 1) and fits_grid(h, n // h, size):
                    found.append(Layout("tokens", (h, n // h), p))
    elif len(shape) == 4:
        if fits_grid(shape[1], shape[2], size):
            found.append(Layout("channels_last", (shape[1], shape[2])))
        if fits_grid(shape[2], shape[3], size):
            found.append(Layout("channels_first", (shape[2], shape[3])))
    return found


_SEQUENCE_MODULES = (
    nn.Conv1d,
    nn.BatchNorm1d,
    nn.AvgPool1d,
    nn.MaxPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)


def _elementwise(module: nn.Module) -> bool:
    """Whether the module keeps its input's layout: torch's activations, dropout, identity."""
    return isinstance(module, nn.Identity) or type(module).__module__ in (
        "torch.nn.modules.activation",
        "torch.nn.modules.dropout",
    )


def module_kind(module: nn.Module, shape: tuple[int, ...]) -> LayoutKind | None:
    """The layout a module's type implies for its output of ``shape``, if it implies one."""
    if isinstance(module, _CHANNELS_FIRST_MODULES):
        return "channels_first"
    if isinstance(module, nn.LayerNorm) and module.normalized_shape == (shape[-1],):
        return "tokens" if len(shape) == 3 else "channels_last"
    if isinstance(module, nn.Linear) and module.out_features == shape[-1]:
        return "tokens" if len(shape) == 3 else "channels_last"
    return None


Resolved = Layout | tuple[Layout, ...] | None  # one layout, several candidates, or none


def resolve_layouts(
    calls: list[tuple[nn.Module, tuple[int, ...] | None]], input_shape: tuple[int, ...]
) -> list[Resolved]:
    """The layout of every call's output, in forward order (see the module doc).

    ``calls`` are ``(module, output shape)`` in the order the calls finish, ``input_shape``
    the input's ``(B, C, H, W)`` (``channels_first``, as a model takes images). A call gets
    one :class:`Layout`, a tuple of the candidates when they stay ambiguous, or ``None``
    (not a grid). What settles an ambiguity, in order: the module's type, the grids of the
    outputs before it, the layout of the output just before it (the input, for the first
    call) when the module is element-wise (an activation, dropout), and the prefix counts
    of the other token outputs.
    """
    out: list[Resolved] = []
    size = (input_shape[2], input_shape[3])
    seen: set[tuple[int, int]] = set()
    before: tuple[tuple[int, ...] | None, Resolved] = (input_shape, Layout("channels_first", size))
    for module, shape in calls:
        found = _one_layout(module, shape, size, seen)
        if isinstance(found, tuple) and _elementwise(module) and before[0] == shape:
            found = before[1] if isinstance(before[1], Layout) else found
        if isinstance(found, Layout):
            seen.add(found.grid)
        out.append(found)
        before = (shape, found)
    prefixes = {r.prefix_tokens for r in out if isinstance(r, Layout) and r.kind == "tokens"}
    for i, r in enumerate(out):
        if isinstance(r, tuple):
            by_prefix = tuple(c for c in r if c.kind == "tokens" and c.prefix_tokens in prefixes)
            out[i] = _settled(r, by_prefix)
    return out


def _settled(cands: tuple[Layout, ...], narrowed: tuple[Layout, ...]) -> Resolved:
    """``narrowed``'s only layout, else ``cands`` (still ambiguous)."""
    return narrowed[0] if len(narrowed) == 1 else cands


def _one_layout(
    module: nn.Module,
    shape: tuple[int, ...] | None,
    size: tuple[int, int],
    seen: set[tuple[int, int]],
) -> Resolved:
    if shape is None or len(shape) not in (3, 4):
        return None
    if len(shape) == 3 and (shape[-1] < 2 or isinstance(module, _SEQUENCE_MODULES)):
        return None  # (B, C, L) sequences and one-feature tokens are no grid
    cands = tuple(layout_candidates(shape, size))
    kind = module_kind(module, shape)
    if kind is not None:
        chosen = tuple(c for c in cands if c.kind == kind)
        if not chosen and len(shape) == 4:  # the module says so; the grid may not fit
            grid = (shape[2], shape[3]) if kind == "channels_first" else (shape[1], shape[2])
            return Layout(kind, grid)
        cands = chosen or cands
    if len(cands) > 1:
        return _settled(cands, tuple(c for c in cands if c.grid in seen))
    if not cands:
        # a 4-D output no grid explains is read as (B, C, h, w), as convolutions output
        return Layout("channels_first", (shape[2], shape[3])) if len(shape) == 4 else None
    return cands[0]
