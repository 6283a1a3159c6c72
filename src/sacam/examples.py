"""Tiny networks for trying sacam out: the models of the documentation's examples."""

from __future__ import annotations

from torch import nn


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
