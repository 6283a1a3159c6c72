"""Tiny networks for trying sacam out: the models of the documentation's examples."""

from __future__ import annotations

import torch
from torch import nn

from .detection.boxes import nms


def tiny_cnn(
    channels: int = 4,
    classes: int = 2,
    activation: type[nn.Module] = nn.ReLU,
    padding: int = 0,
) -> nn.Sequential:
    """A one-convolution classifier for 3-channel images of any size, with random weights.

    The layers are ``Conv2d(3, channels, 3, padding=padding)``, ``activation()``,
    ``AdaptiveAvgPool2d(1)``, ``Flatten()`` and ``Linear(channels, classes)``, named
    ``"0"`` to ``"4"``: layer ``"0"`` is the convolution, ``"1"`` its activation (the layer
    the methods pick by default). The weights come from torch's random generator, so seed it
    (``torch.manual_seed``) for the same network every time. Good for trying a method's
    options in a second; its maps mean nothing.

    Args:
        channels: Feature maps of the convolution (at least 1).
        classes: Outputs of the classifier (at least 1).
        activation: The activation's class, e.g. ``nn.Softplus`` for methods that need a
            smooth one.
        padding: Zero padding of the convolution; 1 keeps the image's size at layer ``"0"``.

    Returns:
        A new ``nn.Sequential`` in training mode, as ``nn.Sequential`` builds it.

    Raises:
        ValueError: ``channels`` or ``classes`` is below 1, or ``padding`` below 0.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn(channels=8, classes=5)
        >>> net(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 5])
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="grad-cam").shape
        torch.Size([1, 16, 16])
    """
    if channels < 1 or classes < 1:
        raise ValueError(
            f"tiny_cnn needs channels and classes of at least 1, got channels={channels} "
            f"and classes={classes}"
        )
    if padding < 0:
        raise ValueError(f"tiny_cnn needs a padding of 0 or more, got {padding}")
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=padding),
        activation(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    )


class TinyDetector(nn.Module):
    """A one-stage grid detector with torchvision's output convention (see :func:`tiny_detector`).

    ``backbone`` (four 3×3 convolutions with ReLU, stride 8 in all) feeds ``head``, a 1×1
    convolution giving each cell of the grid four box values and ``1 + classes`` class
    logits (background first). :meth:`raw` returns the head's output, :meth:`decode` turns
    it into boxes and class probabilities, and ``forward`` returns one dict per image with
    ``boxes`` ``(n, 4)`` (``xyxy`` pixels), ``labels`` ``(n,)`` (1 to ``classes``; 0 is the
    background) and ``scores`` ``(n,)``, after a score threshold, the ``max_detections``
    best and non-maximum suppression, as torchvision's detectors in eval mode. The scores
    keep their autograd graph: only the choice of boxes (thresholding, suppression) is not
    differentiable.
    """

    def __init__(
        self,
        classes: int = 2,
        width: int = 32,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
    ) -> None:
        super().__init__()
        self.stride, self.classes = 8, classes
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.max_detections = max_detections
        half = max(1, width // 2)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(half, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 5 + classes, 1)

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """The head's output ``(B, 5 + classes, h, w)``: box values, then class logits."""
        return self.head(self.backbone(images))

    def decode(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(B, h*w, 4)`` (``xyxy``) and class probabilities ``(B, h*w, 1 + classes)``.

        A cell ``(i, j)`` predicts the centre ``((j + 0.5 + dx) s, (i + 0.5 + dy) s)`` and
        the size ``(s e^dw, s e^dh)``, ``s`` the stride; the probabilities are the softmax
        of its class logits.
        """
        b, _, h, w = raw.shape
        ys, xs = torch.meshgrid(
            torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij"
        )
        grid = torch.stack([xs, ys]).to(raw.dtype) + 0.5
        centre = (grid + raw[:, 0:2]) * self.stride
        size = torch.exp(raw[:, 2:4].clamp(-4.0, 4.0)) * self.stride
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
        probs = torch.softmax(raw[:, 4:], dim=1)
        return boxes.flatten(2).transpose(1, 2), probs.flatten(2).transpose(1, 2)

    def postprocess(
        self, boxes: torch.Tensor, probs: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """One dict per image: each cell's best class, thresholded and suppressed."""
        out = []
        for img_boxes, img_probs in zip(boxes, probs, strict=True):
            scores, labels = img_probs[:, 1:].max(dim=1)
            keep = torch.nonzero(scores >= self.score_threshold)[:, 0]
            best = torch.argsort(scores[keep].detach(), descending=True)
            keep = keep[best[: self.max_detections]]
            kept = keep[nms(img_boxes[keep], scores[keep], labels[keep], self.nms_iou)]
            out.append(
                {"boxes": img_boxes[kept], "labels": labels[kept] + 1, "scores": scores[kept]}
            )
        return out

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections of each image of the ``(B, 3, H, W)`` batch (see the class docstring)."""
        return self.postprocess(*self.decode(self.raw(images)))


def tiny_detector(classes: int = 2, width: int = 32) -> TinyDetector:
    """A small object detector with random weights, returning what torchvision's detectors do.

    For trying :mod:`sacam.detection` in a second: its forward maps a ``(B, 3, H, W)``
    batch to one dict per image with ``boxes`` (``xyxy`` pixels), ``labels`` and
    ``scores``, like torchvision's Faster R-CNN in eval mode, with a differentiable path
    from the scores to the image. Seed torch's random generator for the same network every
    time. Layer ``"backbone"`` (its last ReLU, stride 8) is the layer to explain.

    Args:
        classes: Object classes (labels 1 to ``classes``; 0 is the background).
        width: Channels of the backbone's last layers.

    Raises:
        ValueError: ``classes`` or ``width`` is below 1.

    Example:
        >>> import torch
        >>> from sacam.examples import tiny_detector
        >>> _ = torch.manual_seed(0)
        >>> (out,) = tiny_detector().eval()(torch.rand(1, 3, 64, 64))
        >>> sorted(out), out["boxes"].shape[1]
        (['boxes', 'labels', 'scores'], 4)
    """
    if classes < 1 or width < 1:
        raise ValueError(
            f"tiny_detector needs classes and width of at least 1, got classes={classes} "
            f"and width={width}"
        )
    return TinyDetector(classes, width)
