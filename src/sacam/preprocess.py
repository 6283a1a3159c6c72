"""Image preprocessing: resize, crop, scale to [0, 1], normalise.

:class:`Preprocess` turns a PIL image into a model input. The mean and std constants
are ImageNet's (torchvision's) and TensorFlow EfficientNet-Lite's ``(pixel - 127) / 128``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_RESIZED_AREA",
    "TF_LITE_MEAN",
    "TF_LITE_STD",
    "Preprocess",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127.0 / 255,) * 3
TF_LITE_STD = (128.0 / 255,) * 3
MAX_RESIZED_AREA = 16
"""With ``resize="crop"``, an image is resized whole when the resized copy holds at most
this many times the output's pixels; beyond, only the centre crop is resampled."""


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: resize, crop, scale to [0, 1], normalise.

    Attributes:
        size: output side in pixels.
        resize: ``"crop"`` (shorter side to ``size``, centre crop) or ``"squash"`` (the
            whole image resized to ``size``×``size``).
        mean, std: per-channel normalisation of [0, 1] pixels.

    Example:
        >>> from PIL import Image
        >>> p = Preprocess(size=32)
        >>> p(Image.new("RGB", (64, 48))).shape
        torch.Size([3, 32, 32])
    """

    size: int = 224
    resize: Literal["crop", "squash"] = "crop"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """Resize/crop and return the image as a ``(3, size, size)`` tensor in [0, 1].

        The work is bounded by the output size, whatever the aspect ratio: an image
        whose resized copy would hold more than :data:`MAX_RESIZED_AREA` times the
        output's pixels (longer side over 16 times the shorter, with ``"crop"``) has
        only its centre crop resampled, so a 1 × 6000 picture costs what a 224 × 224
        one does. Other images are resized whole and then cropped.
        """
        img = image if image.mode == "RGB" else image.convert("RGB")  # no copy of RGB
        if self.resize == "squash":
            img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
        else:
            img = _resize_crop(img, self.size)
        arr = np.array(img, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as ``(3, 1, 1)`` tensors of ``like``'s dtype and device."""
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)[:, None, None]
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device)[:, None, None]
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise [0, 1] pixels ``(..., 3, H, W)`` with ``mean`` and ``std``."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`normalize`: model inputs back to [0, 1] pixels."""
        mean, std = self._stats(x)
        return x * std + mean

    def multiply_pixels(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """The model input of ``x``'s pixels times ``factor``: ``normalize(denormalize(x) · f)``.

        Computed as ``x · f + (mean / std) · (f − 1)``, the same in exact arithmetic
        without the rounding of the round trip: where ``f`` is 1 the result is ``x`` bit
        for bit, so a map of ones explains an image as it is on every CPU (its Average
        Drop is 0 and it never counts as an Increase in Confidence).

        Example:
            >>> p = Preprocess(size=4)
            >>> x = torch.randn(1, 3, 4, 4)
            >>> bool(torch.equal(p.multiply_pixels(x, torch.ones(1, 1, 4, 4)), x))
            True
        """
        mean, std = self._stats(x)
        return x * factor + (mean / std) * (factor - 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Return the normalised model input ``(3, size, size)`` for one PIL image."""
        return self.normalize(self.pixels(image))

    def batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Stack several images into one normalised ``(B, 3, size, size)`` batch."""
        return torch.stack([self(im) for im in images])


def _resize_crop(img: Image.Image, size: int) -> Image.Image:
    """The shorter side resized to ``size`` and the centre ``size``×``size`` crop."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if nw * nh <= MAX_RESIZED_AREA * size * size:
        # resize then crop: the pixels every earlier version of sacam gave
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        return img.crop((left, top, left + size, top + size))
    # an extreme aspect ratio: resample the crop box alone (its source rectangle)
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box)
