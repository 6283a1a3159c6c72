"""FEM, the activation-only method: its k-sigma channel weights by hand."""

from __future__ import annotations

import pytest
import torch

import sacam
from sacam.errors import MethodError
from tests.support.nets import GapNet

# Two 3×3 channels: one central outlier, and a bright bottom row.
FEM_A = torch.tensor(
    [
        [
            [[0.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 0.0]],
            [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [3.0, 3.0, 3.0]],
        ]
    ]
)


def test_fem_k_sigma_weights_by_hand() -> None:
    net = GapNet([[1.0, 1.0]])
    # A0: μ = 1, σ = √8 ≈ 2.83; A1: μ = 5/3, σ = √(8/9) ≈ 0.94 (population std).
    # k = 2: thresholds 6.66 and 3.55 -> only the 9 is above: w = (1/9, 0) -> map = A0 / 9
    m = sacam.explain(net, FEM_A, method="fem", layer="feat", upsample=False)
    expected = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    assert torch.allclose(m, expected, atol=1e-6)
    # k = 0.5: thresholds 2.41 and 2.14 -> w = (1/9, 3/9);
    # raw = [[1/3]*3, [1/3, 4/3, 1/3], [1]*3] -> (raw - 1/3) / 1
    m = sacam.explain(net, FEM_A, method="fem", layer="feat", upsample=False, k=0.5)
    expected = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2 / 3, 2 / 3, 2 / 3]]])
    assert torch.allclose(m, expected, atol=1e-6)


def test_fem_weights_ignore_the_class() -> None:
    net = GapNet([[1.0, 1.0], [-3.0, 2.0]])
    a = sacam.explain(net, FEM_A, method="fem", layer="feat", targets=0)
    b = sacam.explain(net, FEM_A, method="fem", layer="feat", targets=1)
    assert torch.equal(a, b)


@pytest.mark.parametrize("k", [float("nan"), "2", True])
def test_fem_rejects_bad_k(k: object) -> None:
    with pytest.raises(MethodError, match="k must be a finite number"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "fem", k=k)
