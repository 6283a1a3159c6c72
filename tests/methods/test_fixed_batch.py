"""A model exported for a fixed batch of 1 (``torch.export``'s default) runs every method.

The perturbation methods feed many perturbed inputs per forward pass; on a model that
takes one input per pass they take one, the memory measurement included, so no pass is
larger than the model allows.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam._speed.memory import fixed_batch
from sacam.models import load_model

# the methods that cannot run on this model by their nature, and the error they give
BY_NATURE = {"legrad": "score_projection"}  # a vision transformer's tokens only


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, nn.Module]:
    net = _cnn()
    program = torch.export.export(net, (torch.rand(1, 3, 16, 16),))  # batch fixed at 1
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.export.save(program, str(path))
    return net, load_model(str(path)).model


def test_the_exported_model_refuses_other_batches(exported) -> None:
    _, model = exported
    assert fixed_batch(model) == 1 and fixed_batch(_cnn()) is None
    with pytest.raises(RuntimeError, match="shape"):
        model(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("method", sacam.list_methods())
def test_every_method_runs_on_a_model_exported_at_batch_1(method, exported) -> None:
    net, model = exported
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    # CAM reads the classifier's weights from an nn.Linear, which the exported program
    # holds as a graph: hand it the (same) layer
    options = {"fc": net[6]} if method == "cam" else {}
    if method in BY_NATURE:
        with pytest.raises(sacam.MethodError, match=BY_NATURE[method]):
            sacam.explain(model, x, method=method)
        return
    got = sacam.explain(model, x, method=method, **options)
    assert got.shape == (1, 16, 16) and torch.isfinite(got).all()


@pytest.mark.parametrize("method", ["score-cam", "ablation-cam", "recipro-cam", "fd-cam"])
def test_the_exported_model_gives_the_maps_of_the_module(method, exported) -> None:
    net, model = exported
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    want = sacam.explain(net, x, method=method, inputs_per_pass=1)
    torch.testing.assert_close(sacam.explain(model, x, method=method), want)
