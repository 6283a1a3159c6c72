"""EfficientNet-Lite whose classifier takes its batch size from the features.

``efficientnet_lite_pytorch``'s ``EfficientNet.forward`` flattens the pooled features
with ``x.view(inputs.size(0), -1)``: the batch size of the *input*. The network after a
layer then cannot run on more rows than the input had, which rules out feeding the image
once and expanding the layer's output to a batch of edited rows (how Recipro-CAM,
FD-CAM and Ablation-CAM run the network after the layer, ``sacam.methods._tail``). This
subclass flattens with ``x.flatten(1)``: the same logits for every input (the pooled
features are contiguous, so ``view`` and ``flatten`` give the same tensor), the same
modules, parameters and state-dict keys.
"""

from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet

__all__ = ["EfficientNetLite"]


class EfficientNetLite(EfficientNet):  # type: ignore[misc]  # untyped base class
    """``EfficientNet`` whose ``forward`` flattens the pooled features per row."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)`` of ``inputs`` ``(B, 3, H, W)``, as the base class."""
        if self._global_params.local_pooling:  # not used by Lite0-4: the base class's path
            return super().forward(inputs)  # type: ignore[no-any-return]
        x = self._avg_pooling(self.extract_features(inputs)).flatten(1)
        return self._fc(self._dropout(x))  # type: ignore[no-any-return]
