"""What every call does to the user's model, in one place: lock, guard, hooks, input checks.

sacam changes a model only for the duration of a call: eval mode, frozen parameters and
forward hooks. Two threads calling sacam on the *same* model would otherwise see each
other's changes (one thread restores the flags the other just set, one thread's hooks
capture the other's forward pass), so every call on a model holds that model's lock
(:func:`model_lock`, re-entrant): calls on one model are serialised, calls on different
models run in parallel. Hooks additionally ignore forward passes from other threads, so
a forward pass that user code runs on the model from another thread, without sacam, is
never captured (it does run while the model is in eval mode with frozen parameters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ._layers import LayerRef
from ._locks import Hook, model_lock, this_thread_only
from .errors import InputError, LayerError
from .tokens import Layout

__all__ = ["Capture", "check_images", "model_guard"]


@contextlib.contextmanager
def model_guard(model: nn.Module, *, eval_mode: bool = True, freeze: bool = True) -> Iterator[None]:
    """Hold the model's lock, set eval mode and freeze parameters; restore all, whatever happens.

    Inside, inference mode is off (gradient methods need autograd even when the caller
    runs under ``torch.inference_mode()``; gradient-free passes switch it on again).
    With ``eval_mode=False`` the model's buffers (batch-norm running statistics and their
    counters) are restored afterwards as well, so a call in training mode leaves no trace.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with model_guard(net):
        ...     net.training, net[0].weight.requires_grad
        (False, False)
        >>> net.training, net[0].weight.requires_grad
        (True, True)
    """
    with model_lock(model):
        flags = [(m, m.training) for m in model.modules()]
        grads = [(p, p.requires_grad) for p in model.parameters()]
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        if not eval_mode:
            with torch.no_grad():
                saved = [(b, b.detach().clone()) for b in model.buffers()]
        try:
            if eval_mode:
                model.eval()
            if freeze:
                for p, _ in grads:
                    p.requires_grad_(False)
            with torch.inference_mode(False):
                yield
        finally:
            for m, training in flags:
                m.training = training
            for p, requires in grads:
                p.requires_grad_(requires)
            if saved:
                with torch.no_grad():
                    for buf, copy in saved:
                        buf.copy_(copy)


def check_images(images: object, model: nn.Module, *, volumes: bool = False) -> torch.Tensor:
    """Validate a batch for ``model`` and return it detached (an ordinary tensor).

    Nothing here reads the images' values back from an accelerator: the NaN/infinity check
    runs on CPU tensors only (see the comment at the check).

    An inference tensor (made under ``torch.inference_mode()``) is copied to an ordinary
    one, so that autograd can run on the layers after it. ``volumes=True`` accepts 5-D
    inputs ``(B, C, T, H, W)`` (3D CNNs, video) as well.
    """
    if not isinstance(images, torch.Tensor):
        raise InputError(
            f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}; "
            "use sacam.models.load_model(...).preprocess to turn PIL images into a batch"
        )
    if images.ndim != 4 and not (volumes and images.ndim == 5):
        hint = " (add a batch axis: images.unsqueeze(0))" if images.ndim == 3 else ""
        if images.ndim == 5:
            hint = " (5-D inputs are explained by the gradient and decomposition methods)"
        kinds = "4-D (B, C, H, W) or 5-D (B, C, T, H, W)" if volumes else "4-D (B, C, H, W)"
        raise InputError(f"images must be {kinds}, got shape {tuple(images.shape)}{hint}")
    if images.shape[0] == 0 or 0 in images.shape[2:]:
        raise InputError(f"images must not be empty, got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise InputError(
            f"images must be floating point (normalised as the model expects), got {images.dtype}"
        )
    if images.device.type == "cpu" and not torch.isfinite(images).all():
        # only where reading the answer back is free: on an accelerator the check would
        # stall the call until the device caught up; there a NaN or infinite input shows
        # as non-finite target scores, which the one check after the forward pass refuses
        raise InputError("images contain NaN or infinite values")
    param = next(iter(model.parameters()), None)
    if param is not None and param.is_floating_point() and param.dtype != images.dtype:
        raise InputError(
            f"images are {images.dtype} but the model's parameters are {param.dtype}: "
            f"convert one of them (images.to({param.dtype}))"
        )
    if param is not None and param.device != images.device:
        raise InputError(
            f"images are on {images.device} but the model is on {param.device}: "
            "move one of them (images.to(device))"
        )
    if images.is_inference():
        with torch.inference_mode(False):
            return images.clone()
    return images.detach()


class Capture:
    """Forward hooks on the chosen (module, call) pairs: store their outputs, or edit them.

    Calls are counted modulo the module's calls per forward pass, so one capture serves
    several forward passes in a row (each pass overwrites what the previous one stored).
    With ``edit``, the hook returns ``edit(label, output)`` in place of the output and
    stores nothing (used for ablations; for a token or channel-last layer, ``edit`` sees
    and returns maps ``(B, C, h, w)``, see :mod:`sacam.tokens`); hooks exist only inside
    the ``with`` block and act only on forward passes of the thread that entered it.
    """

    def __init__(
        self,
        refs: list[LayerRef],
        *,
        with_grad: bool,
        edit: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.refs = refs
        self.with_grad = with_grad
        self.edit = edit
        self.stored: dict[str, torch.Tensor] = {}
        self._count: dict[nn.Module, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.active = True

    def __enter__(self) -> Capture:
        by_module: dict[nn.Module, list[LayerRef]] = {}
        for ref in self.refs:
            by_module.setdefault(ref.module, []).append(ref)
        try:
            for module, refs in by_module.items():
                hook = this_thread_only(self._make_hook(refs))
                self._handles.append(module.register_forward_hook(hook))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reset(self) -> None:
        """Forget stored outputs and call counts (before a new forward pass)."""
        self.stored.clear()
        self._count.clear()

    def _make_hook(self, refs: list[LayerRef]) -> Hook:
        wanted = {ref.call: ref.label for ref in refs}
        layouts = {ref.call: ref.layout for ref in refs}
        n_calls = max(1, refs[0].n_calls)

        def hook(module: nn.Module, _inp: object, out: object) -> torch.Tensor | None:
            if not self.active:
                return None
            k = self._count.get(module, 0)
            self._count[module] = k + 1
            k %= n_calls
            if k not in wanted:
                return None
            if not isinstance(out, torch.Tensor):
                raise LayerError(
                    f"layer {wanted[k]!r} returns {type(out).__name__}, not a tensor: pick a "
                    "layer whose output is a tensor"
                )
            if self.edit is not None:
                layout = layouts[k]
                if isinstance(layout, Layout) and layout.kind != "channels_first":
                    # the edit sees and returns maps (B, C, h, w); the net gets its layout
                    return layout.from_maps(self.edit(wanted[k], layout.to_maps(out)), out)
                return self.edit(wanted[k], out)
            if self.with_grad:
                kept = out if out.requires_grad else out.detach().requires_grad_(True)
                self.stored[wanted[k]] = kept
                return kept.clone()  # the rest of the net may work in place on its copy
            self.stored[wanted[k]] = out.clone()
            return None

        return hook
