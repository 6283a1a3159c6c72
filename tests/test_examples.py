"""sacam.examples.tiny_cnn: the documentation's example network."""

import pytest
import torch
from torch import nn

from sacam.examples import tiny_cnn


def test_tiny_cnn_is_the_documented_stack() -> None:
    torch.manual_seed(0)
    net = tiny_cnn(channels=8, classes=5, activation=nn.Softplus, padding=1)
    torch.manual_seed(0)
    expected = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Softplus(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    assert [type(m) for m in net] == [type(m) for m in expected]
    assert net[0].padding == (1, 1)
    for a, b in zip(net.state_dict().values(), expected.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same random draws in the same order
    x = torch.rand(2, 3, 10, 12)
    assert torch.equal(net(x), expected(x))
    assert net[0](x).shape == (2, 8, 10, 12)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"channels": 0}, "channels"), ({"classes": 0}, "classes"), ({"padding": -1}, "padding")],
)
def test_tiny_cnn_refuses_bad_sizes(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        tiny_cnn(**kwargs)
