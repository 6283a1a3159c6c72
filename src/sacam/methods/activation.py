"""Activation-based CAMs: CAM (Zhou et al. 2016)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._layers import probe
from ..core import BaseCAM
from ..errors import LayerError, MethodError, TargetError
from ..explanation import CallContext, LayerData
from ..registry import register_method


@register_method(
    "cam",
    paper="Zhou et al., CVPR 2016",
    url="https://arxiv.org/abs/1512.04150",
    description="Weights of the classifier's fully connected layer after global pooling.",
    family="activation",
)
class CAM(BaseCAM):
    r"""CAM (Zhou et al., 2016, https://arxiv.org/abs/1512.04150).

    For a network ending in global average pooling and a linear layer ``fc``:

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k W^{fc}_{c,k} A^k\Big)

    Gradient-free: one forward pass under ``torch.inference_mode()``. Needs class-index
    targets and a target layer with as many channels as ``fc`` has inputs. ``fc`` (a module
    or dotted name) defaults to the last ``nn.Linear`` of the forward pass with that many
    inputs. On such a network the map equals Grad-CAM's up to a positive factor.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(1, 3, 16, 16), method="cam").shape
        torch.Size([1, 16, 16])
    """

    uses_gradients = False
    graph_safe = True

    def __init__(self, *args: Any, fc: nn.Module | str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if fc is not None and not isinstance(fc, nn.Module | str):
            raise MethodError("fc must be an nn.Linear module, its dotted name, or None")
        self.fc = fc

    def _find_fc(self, channels: int, ctx: CallContext) -> nn.Linear:
        model = self.model
        if isinstance(self.fc, str):
            try:
                fc = model.get_submodule(self.fc)
            except AttributeError:
                raise LayerError(f"no module named {self.fc!r} for fc in this model") from None
        elif isinstance(self.fc, nn.Module):
            fc = self.fc
        else:
            record = probe(model, ctx.images)
            modules = dict(model.named_modules())
            found = [
                modules[n]
                for n, _, _ in reversed(record.order)
                if isinstance(modules[n], nn.Linear) and modules[n].in_features == channels
            ]
            if not found:
                raise LayerError(
                    f"CAM needs a final nn.Linear with {channels} inputs after global pooling of "
                    "the target layer; none found: pass fc=, or use grad-cam"
                )
            fc = found[0]
        if not isinstance(fc, nn.Linear) or fc.in_features != channels:
            raise LayerError(
                f"CAM's fc must be an nn.Linear with {channels} inputs (the target layer's "
                f"channels), got {fc!r}"
            )
        return fc

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Rows of the fc weight matrix for each sample's class, ``(B, K)``."""
        if ctx.class_idx is None:
            raise TargetError("CAM explains class indices; callable targets need a gradient method")
        fc = self._find_fc(layer.activations.shape[1], ctx)
        return fc.weight.detach()[ctx.class_idx].to(layer.activations.dtype)
