"""Deep Feature Factorization (sacam.concepts): known factors recovered, head found, figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sacam
from sacam.errors import LayerError, MethodError
from tests.support.nets import GapNet, small_cnn

# two concepts with disjoint supports on 2 images of 4×4, and background (both 0)
H_TRUE = torch.zeros(2, 2, 4, 4)  # (concept, image, h, w)
H_TRUE[0, 0, :, :2] = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]  # image 0: left half
H_TRUE[1, 0, :3, 2:] = 2.0  # image 0: top right; (3, 2:) background
H_TRUE[0, 1, :2, :] = 1.5  # image 1: top half
H_TRUE[1, 1, 2:, 1:] = torch.tensor([1.0, 2.0, 3.0])  # bottom, but (2:, 0) background
W_TRUE = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # (channels, concepts)


def _activations() -> torch.Tensor:
    """A = W H as a (B, K, h, w) batch: the input of GapNet's identity feature layer."""
    return torch.einsum("kn,nbhw->bkhw", W_TRUE, H_TRUE)


def test_concepts_recover_known_factors_and_their_classes() -> None:
    net = GapNet([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # class 0 reads channel 0, class 1 channel 1
    found = sacam.concepts(net, _activations(), n_components=2, layer="feat", max_iter=5000)
    assert found.maps.shape == (2, 2, 4, 4) and found.vectors.shape == (2, 3)
    truth = H_TRUE.transpose(0, 1)  # (image, concept, h, w)
    truth = truth / truth.flatten(2).amax(2)[..., None, None]
    # NMF finds the factors up to order and scale: match the concepts by their vectors
    order = [int(torch.argmax(found.vectors[j, :2])) for j in range(2)]  # channel 0 or 1
    assert sorted(order) == [0, 1]
    for j, true_j in enumerate(order):
        assert torch.allclose(found.maps[:, j], truth[:, true_j], atol=1e-3)
        cos = torch.nn.functional.cosine_similarity(found.vectors[j], W_TRUE[:, true_j], dim=0)
        assert cos > 1 - 1e-4
    # the head (found: the only nn.Linear with 3 inputs) on each concept vector
    assert found.top_classes[:, 0].tolist() == order
    expected = torch.softmax(found.vectors @ net.fc.weight.T, dim=1)
    assert torch.allclose(found.scores, expected, atol=1e-6)
    assert torch.allclose(found.top_scores, found.scores.sort(1, descending=True).values, atol=0)


def test_concepts_upsample_choose_classifier_and_leave_the_model() -> None:
    net = small_cnn().train()
    modes = [m.training for m in net.modules()]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    found = sacam.concepts(net, x, n_components=3, max_iter=3000)
    assert found.maps.shape == (2, 3, 16, 16) and found.layer == "5"  # the dropout, last 4-D output
    assert found.maps.amin() >= 0 and found.maps.amax() <= 1
    assert found.top_classes.shape == (3, 2)
    assert [m.training for m in net.modules()] == modes
    assert all(p.requires_grad for p in net.parameters())
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0
    low = sacam.concepts(net, x, n_components=3, upsample=False, classifier=None, max_iter=3000)
    assert low.maps.shape == (2, 3, 8, 8) and low.scores is None and low.top_classes is None
    # the same seed gives the same concepts
    again = sacam.concepts(net, x, n_components=3, max_iter=3000)
    assert torch.equal(again.vectors, found.vectors)
    custom = sacam.concepts(net, x, 3, classifier=lambda v: v[:, :4], top_k=1, max_iter=3000)
    assert custom.top_classes.shape == (3, 1) and int(custom.top_classes.max()) < 4


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"n_components": 0}, MethodError, "n_components must be a positive int"),
        ({"top_k": 1.5}, MethodError, "top_k"),
        ({"seed": "0"}, MethodError, "seed"),
        ({"layer": ["1", "4"]}, LayerError, "single layer"),
        ({"classifier": 3}, MethodError, "classifier"),
    ],
)
def test_concepts_reject_bad_arguments(options, error, message) -> None:
    with pytest.raises(error, match=message):
        sacam.concepts(small_cnn(), torch.rand(1, 3, 16, 16), **options)


def test_plot_concepts_writes_a_figure(tmp_path) -> None:
    net = GapNet([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    found = sacam.concepts(net, _activations(), n_components=2, layer="feat", max_iter=5000)
    path = sacam.plot_concepts(
        tmp_path / "c.png", torch.rand(3, 4, 4), found, 1, class_names=["red", "green"]
    )
    with Image.open(path) as img:
        assert img.size == (800, 450)
        pixels = np.asarray(img.convert("RGB"))
    assert len({tuple(p) for p in pixels.reshape(-1, 3)[::97]}) > 10  # not a blank canvas
    with pytest.raises(MethodError, match="size"):
        sacam.plot_concepts(tmp_path / "d.png", torch.rand(3, 8, 8), found)


def test_find_classifier_takes_the_last_matching_linear() -> None:
    from sacam.methods.dff import find_classifier

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert find_classifier(net, 4) is net[2]
    assert find_classifier(net, 3) is None
