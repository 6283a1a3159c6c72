"""SA-CAM: the formulation of docs/sa-cam.md, checked piece by piece."""

from __future__ import annotations

import math

import pytest
import torch

import sacam
from sacam.errors import MethodError
from sacam.explanation import CallContext, LayerData
from sacam.methods.attention import SACAM, attend, self_attention
from tests.support.nets import GapNet, small_cnn

# Two positions, K = 2: f1 = (1, 0), f2 = (1, 1)  ->  A^0 = [1, 1], A^1 = [0, 1]
F2 = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])


def _sm(a: float, b: float) -> float:
    """softmax([a, b])[0]"""
    return 1.0 / (1.0 + math.exp(b - a))


def test_cosine_operator_by_hand() -> None:
    # cos(f1, f2) = 1/sqrt(2); tau = 1: row 1 = softmax([1, .7071]) = [.57270, .42730]
    S = self_attention(F2, "cosine", 1.0)
    p = _sm(1.0, 1 / math.sqrt(2))
    assert p == pytest.approx(0.5727043, abs=1e-7)
    assert torch.allclose(S[0], torch.tensor([[p, 1 - p], [1 - p, p]]), atol=1e-6)
    # O^k_i = sum_j S_ij A^k_j: O^0 = [1, 1], O^1 = [S_12, S_22] = [.42730, .57270]
    attended = attend(F2, S)
    assert torch.allclose(attended[0], torch.tensor([[1.0, 1.0], [1 - p, p]]), atol=1e-6)


def test_dot_operator_by_hand() -> None:
    # f.f / sqrt(2): [[.7071, .7071], [.7071, 1.4142]] -> row 1 [.5, .5], row 2 [.33024, .66976]
    S = self_attention(F2, "dot")
    q = _sm(1 / math.sqrt(2), math.sqrt(2))
    assert q == pytest.approx(0.3302385, abs=1e-7)
    assert torch.allclose(S[0], torch.tensor([[0.5, 0.5], [q, 1 - q]]), atol=1e-6)


def test_class_operator_by_hand() -> None:
    # w = (2, .5): w*f1 = (2, 0), w*f2 = (2, .5); cos = 4 / (2 sqrt(4.25)) = .97014
    S = self_attention(F2, "class", 1.0, channel_weights=torch.tensor([[2.0, 0.5]]))
    r = _sm(1.0, 4 / (2 * math.sqrt(4.25)))
    assert r == pytest.approx(0.5074638, abs=1e-7)
    assert torch.allclose(S[0], torch.tensor([[r, 1 - r], [1 - r, r]]), atol=1e-6)
    with pytest.raises(MethodError, match="needs channel weights"):
        self_attention(F2, "class", 1.0)


def test_hops_apply_the_attention_repeatedly() -> None:
    torch.manual_seed(0)
    F = torch.rand(2, 5, 9)
    S = self_attention(F, "cosine", 3.0)
    assert torch.allclose(attend(F, S, 2), F @ (S @ S).transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize("operator", ["cosine", "dot", "class"])
def test_rows_sum_to_one(operator, cnn, images) -> None:
    out = sacam.explain_full(cnn, images, method="sa-cam", operator=operator)
    S = out.extras["sa-cam"][out.layers[0]].attention
    assert S.shape == (3, 64, 64)
    assert torch.allclose(S.sum(-1), torch.ones(3, 64), atol=1e-5)
    assert (S >= 0).all()


@pytest.mark.parametrize("operator", ["cosine", "dot", "class"])
def test_permuting_positions_permutes_the_map(operator) -> None:
    torch.manual_seed(0)
    acts = torch.rand(2, 6, 3, 4)
    grads = torch.randn(2, 6, 3, 4)
    perm = torch.randperm(12)
    net = small_cnn()
    cam = SACAM(net, "1", operator=operator, gamma=1.5, hops=2)
    ref = sacam._layers.LayerRef(net[1], "1", 0, 1)
    ctx = CallContext(
        net, torch.rand(2, 3, 8, 8), torch.zeros(2, 5), lambda o: o[:, 0], None, torch.zeros(2)
    )

    def permute(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(2)[:, :, perm].reshape(t.shape)

    plain = cam.layer_map(LayerData(ref, acts, grads), ctx).flatten(1)
    permuted = cam.layer_map(LayerData(ref, permute(acts), permute(grads)), ctx).flatten(1)
    assert torch.allclose(permuted, plain[:, perm], atol=1e-5)


@pytest.mark.parametrize("base", ["grad", "gradpp", "score", "cam", "grad-cam"])
@pytest.mark.parametrize("operator", ["cosine", "dot", "class"])
def test_gamma_zero_is_exactly_the_base(base, operator, cnn, images) -> None:
    names = {"grad": "grad-cam", "gradpp": "grad-cam++", "score": "score-cam"}
    layer = "4" if base == "cam" else None
    # Score-CAM's inputs per pass are otherwise tuned by timing, and the batch size moves
    # the last bits of its scores: both calls get the same one
    opts = {"inputs_per_pass": 8} if base == "score" else {}
    expect = sacam.explain(cnn, images, method=names.get(base, base), layer=layer, **opts)
    got = sacam.explain(
        cnn,
        images,
        method="sa-cam",
        layer=layer,
        base=base,
        gamma=0.0,
        operator=operator,
        base_options=opts,
    )
    assert torch.equal(got, expect)


def test_gamma_changes_the_map_by_diffusion(cnn, images) -> None:
    base = sacam.explain(cnn, images, method="grad-cam")
    refined = sacam.explain(cnn, images, method="sa-cam", gamma=2.0, operator="cosine")
    assert not torch.allclose(base, refined, atol=1e-3)


def test_grad_base_map_is_base_map_plus_diffused_base_map() -> None:
    """With map-independent weights: L = m + gamma * m (S^t)^T, m = sum_k w_k A^k (design note)."""
    net = GapNet([[1.0, 2.0], [3.0, -1.0]])
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    out = sacam.explain_full(
        net,
        x,
        method="sa-cam",
        layer="feat",
        targets=0,
        upsample=False,
        operator="cosine",
        gamma=0.5,
        hops=1,
        temperature=2.0,
    )
    S = self_attention(x.flatten(2), "cosine", 2.0)[0]
    m = (x[0, 0] + 2 * x[0, 1]).flatten() / 4  # Grad-CAM weights are W/4
    raw = (m + 0.5 * S @ m).clamp_min(0)
    expect = (raw - raw.min()) / (raw.max() - raw.min())
    assert torch.allclose(out.maps.flatten(), expect, atol=1e-6)


def test_inspection_and_attention_picture(tmp_path, cnn, images) -> None:
    out = sacam.explain_full(cnn, images, method="sa-cam", hops=2)
    info = out.extras["sa-cam"][out.layers[0]]
    assert info.refined.shape == info.activations.shape == (3, 16, 8, 8)
    assert info.weights.shape == (3, 16)
    row = info.attention_row(0, 3, 4)
    assert row.shape == (8, 8) and float(row.sum()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(MethodError, match="outside"):
        info.attention_row(0, 8, 0)
    from sacam.viz import save_attention

    path = save_attention(images[0].clamp(0, 1), out.maps[0], row, (3, 4), tmp_path / "att.png")
    assert path.stat().st_size > 1000


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"operator": "euclid"}, "operator must be"),
        ({"gamma": -1.0}, "gamma must be"),
        ({"gamma": float("nan")}, "gamma must be"),
        ({"temperature": 0}, "temperature must be"),
        ({"hops": 0}, "hops must be"),
        ({"base": "nope"}, "valid bases: score, grad, gradpp"),
        ({"base": "sa-cam"}, "unknown SA-CAM base"),
    ],
)
def test_bad_options(options, message, cnn, images) -> None:
    with pytest.raises(MethodError, match=message):
        sacam.explain(cnn, images, method="sa-cam", **options)


def test_score_base_options_reach_the_base(cnn, images) -> None:
    a = sacam.explain(
        cnn, images, method="sa-cam", base="score", base_options={"inputs_per_pass": 3}
    )
    b = sacam.explain(
        cnn, images, method="sa-cam", base="score", base_options={"inputs_per_pass": 64}
    )
    assert torch.allclose(a, b, atol=1e-6)


def test_default_model_sacam_looks_at_the_cat(default_model) -> None:
    from sacam.images import sample_image

    x = default_model.preprocess(sample_image("chelsea"))[None]
    m = sacam.explain(default_model.model, x, method="sa-cam")[0]
    centre = m[56:168, 56:168].mean()
    border = torch.cat([m[:28].flatten(), m[-28:].flatten()]).mean()
    assert centre > 2 * border
