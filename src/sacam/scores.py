"""Reading a model's output: its logits, its top-1 classes and its class probabilities.

Every method reads a model's output the same way (:func:`output_logits`): a tensor is
itself, a Hugging Face output its ``logits``, a mapping its ``"logits"`` entry (else its
only tensor), a tuple or list its first element. Probabilities follow what the output
means: softmax over classes, a sigmoid per label for a one-logit output, the output
itself after an ``nn.Sigmoid`` (:func:`class_probabilities`).
"""

from __future__ import annotations

import torch
from torch import nn

from ._hooks import model_guard
from ._outputs import OutputTransform, logits_model, probabilities, to_logits

__all__ = ["class_probabilities", "output_logits", "predict"]


def output_logits(output: object) -> torch.Tensor:
    """The ``(B, classes)`` tensor sacam explains from a model's output.

    Read as every sacam method reads it: a tensor is itself; an object with a tensor
    ``logits`` field (a Hugging Face ``ModelOutput``) gives that field; a mapping its
    ``"logits"`` entry, else its only tensor; a tuple or list its first element.

    Raises:
        TargetError: the output holds no tensor by these rules (pass
            ``output_transform=`` to the method for such a model).

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 5)
        >>> output_logits({"logits": logits, "aux": torch.ones(2)}) is logits
        True
    """
    return to_logits(output)


def predict(
    model: nn.Module, images: torch.Tensor, output_transform: OutputTransform | None = None
) -> torch.Tensor:
    """Top-1 class of each image (eval mode, no graph), as an ordinary tensor.

    The model's output is read as logits by :func:`sacam._outputs.to_logits`
    (``output_transform`` for outputs it cannot read).

    Example:
        >>> from torch import nn
        >>> predict(nn.Flatten(), torch.tensor([[[[0.0, 2.0, 1.0]]]])).tolist()
        [1]
    """
    with model_guard(model), torch.inference_mode():
        top = logits_model(model, output_transform)(images).argmax(1)
    return top.clone()  # an ordinary tensor, usable outside inference mode


def class_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, classes)`` (float32) of ``model`` on a batch, no graph.

    The output is read as logits as every method reads it, then turned into
    probabilities as the model's output means them: softmax over classes; an independent
    sigmoid per label for a one-logit output; the output itself after an ``nn.Sigmoid``
    (:func:`sacam._outputs.probabilities`). The caller sets the model's mode.

    Example:
        >>> from torch import nn
        >>> x = torch.full((1, 2, 1, 1), 2.0)
        >>> class_probabilities(nn.Flatten(), x).tolist()  # softmax of two equal logits
        [[0.5, 0.5]]
        >>> multi_label = nn.Sequential(nn.Flatten(), nn.Sigmoid())  # its output: sigmoid(2)
        >>> [round(p, 4) for p in class_probabilities(multi_label, x)[0].tolist()]
        [0.8808, 0.8808]
    """
    wrapped = logits_model(model)
    with torch.inference_mode():
        return probabilities(wrapped, wrapped(images))
