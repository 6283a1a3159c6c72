"""The adversarial stability protocol (§5): FGSM/PGD comparison, white-box map attacks, ε sweep."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

import sacam
from sacam.api import build_method
from sacam.errors import MethodError
from sacam.evaluation import adversarial, adversarial_metrics
from sacam.evaluation.registry import arrow, metric_info, value_info, written_names
from sacam.preprocess import Preprocess
from tests.support.runs import colour_folder, run_config

PLAIN = Preprocess(size=2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _linear_net(weight: np.ndarray, bias: np.ndarray) -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0])).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(weight))
        net[1].bias.copy_(torch.from_numpy(bias))
    return net.eval()


def test_fgsm_step_is_eps_times_the_sign_of_the_hand_gradient() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 12)), rng.normal(size=3)
    net = _linear_net(w, b)
    x = rng.uniform(0.1, 0.9, size=(2, 12))
    # cross-entropy of class c for logits z = W x + b: dL/dx = W^T (softmax(z) - onehot(c))
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    c = z.argmax(1)
    grad = (p - np.eye(3)[c]) @ w
    eps = 4 / 255
    expected = np.clip(x + eps * np.sign(grad), 0, 1)
    images = torch.from_numpy(x).view(2, 3, 2, 2)
    adv = adversarial.adversarial_examples(net, images, PLAIN, "fgsm", eps=eps)
    assert np.allclose(adv.view(2, 12).numpy(), expected, rtol=0, atol=1e-12)


def test_pgd_stays_in_the_ball_and_raises_the_loss() -> None:
    rng = np.random.default_rng(1)
    net = _linear_net(rng.normal(size=(3, 12)), rng.normal(size=3))
    images = torch.from_numpy(rng.uniform(0, 1, size=(4, 3, 2, 2)))
    c = net(images).argmax(1)
    adv = adversarial.adversarial_examples(net, images, PLAIN, "pgd", eps=2 / 255, iterations=12)
    assert float((adv - images).abs().max()) <= 2 / 255 + 1e-12
    assert adv.min() >= 0 and adv.max() <= 1
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert (ce(net(adv), c, reduction="none") > ce(net(images), c, reduction="none")).all()


def test_centre_of_mass_of_a_hand_map() -> None:
    m = torch.zeros(1, 4, 5)
    m[0, 1, 0] = 2.0
    m[0, 3, 4] = 1.0
    # rows (2·1 + 1·3)/3, columns (2·0 + 1·4)/3
    assert adversarial.centre_of_mass(m).tolist() == [[pytest.approx(5 / 3), pytest.approx(4 / 3)]]
    assert adversarial.centre_of_mass(torch.zeros(1, 4, 5)).tolist() == [[1.5, 2.0]]


def _tanh_net(size: int = 5) -> nn.Module:
    """conv (the layer) -> tanh -> flatten -> linear: Grad-CAM's gradient depends on x."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * size * size, 3)
    )
    return net.double().eval()


@pytest.mark.parametrize("method", ["grad-cam", "grad-cam++", "layer-cam", "sa-cam", "eigen-cam"])
def test_white_box_gradient_equals_finite_differences(method) -> None:
    net = _tanh_net()
    cam = build_method(net, method, "0")
    assert cam.supports_graph()
    x = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weights = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    target = 1
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((cam.explain_graph(xg, target).maps * weights).sum(), xg)

    def f(z: torch.Tensor) -> float:  # the ordinary (detached) engine: an independent path
        return float((cam(z, target) * weights).sum())

    h = 1e-6
    fd = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=torch.float64)
        e[i] = h
        e = e.view_as(x)
        fd.view(-1)[i] = (f(x + e) - f(x - e)) / (2 * h)
    # central differences: truncation O(h²) and rounding ~1e-16/h, both far below 1e-6
    assert float(grad.abs().max()) > 1e-3
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_double_backward_matters_for_gradient_methods() -> None:
    net = _tanh_net()
    cam = build_method(net, "grad-cam", "0")
    x = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (full,) = torch.autograd.grad(cam.explain_graph(xg, 1).maps.sum(), xg)
    # the same map with the layer gradient treated as a constant (no double backward)
    acts = net[0](xg)
    with torch.enable_grad():
        a = acts.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(net[1:](a)[:, 1].sum(), a)
    raw = torch.relu((g.mean((2, 3), keepdim=True) * acts).sum(1))
    lo, hi = raw.amin((1, 2), keepdim=True), raw.amax((1, 2), keepdim=True)
    (partial,) = torch.autograd.grad(((raw - lo) / (hi - lo)).sum(), xg)
    assert float((full - partial).abs().max()) > 1e-3


def test_methods_without_a_graph_refuse_it() -> None:
    net = _tanh_net()
    with pytest.raises(MethodError, match="differentiable"):
        build_method(net, "score-cam", "0").explain_graph(torch.rand(1, 3, 5, 5).double())
    assert not build_method(net, "eigen-cam", "0", variant="pytorch-grad-cam").supports_graph()
    assert not build_method(net, "sa-cam", "0", base="score").supports_graph()


class _Threshold(nn.Module):
    """Class 0 while pixel (0, 0, 0) stays above the threshold, else class 1."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.t = threshold
        self.dummy = nn.Linear(1, 1)  # a parameter, so the model has a dtype and device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x[:, 0, 0, 0] - self.t
        return torch.stack([d, torch.zeros_like(d)], 1)


def test_rejected_steps_are_counted_where_the_label_flips() -> None:
    a = 1 / 255
    x = torch.full((2, 3, 2, 2), 0.2, dtype=torch.float64)
    x[:, :, 0, 0] = 0.9

    def map_fn(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return images.sum(1)  # the top pixel (0, 0) loses mass, the others gain it

    def run(threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        net = _Threshold(threshold).double().eval()
        return adversarial.explanation_attack(
            net, x, PLAIN, map_fn, "topk", eps=8 * a, iterations=10, k=1
        )

    # the label flips once pixel (0, 0) falls below 0.9 - 2.5a: the third step is rejected
    adv, kept = run(0.9 - 2.5 * a)
    assert kept.tolist() == [2, 2]
    assert torch.allclose(adv[:, :, 0, 0], torch.full((2, 3), 0.9 - 2 * a, dtype=torch.float64))
    assert torch.allclose(adv[:, :, 1, 1], torch.full((2, 3), 0.2 + 2 * a, dtype=torch.float64))
    with torch.no_grad():
        assert _Threshold(0.9 - 2.5 * a)(adv).argmax(1).tolist() == [0, 0]
    # never flips: every step is kept, and the ball stops the pixel at 0.9 - eps
    adv, kept = run(-1.0)
    assert kept.tolist() == [10, 10]
    assert torch.allclose(adv[:, :, 0, 0], torch.full((2, 3), 0.9 - 8 * a, dtype=torch.float64))


def test_label_preserving_pgd_steps_along_the_hand_gradient_and_stops_before_a_flip() -> None:
    a = 1 / 255
    x = torch.full((2, 3, 2, 2), 0.2, dtype=torch.float64)
    x[:, :, 0, 0] = 0.9
    # class 0's logit is d = x000 - t, class 1's is 0: the cross-entropy of class 0 falls
    # as x000 grows, so its gradient is negative at x000 only and zero elsewhere, and each
    # PGD step lowers x000 by a; the label flips once x000 < t
    net = _Threshold(0.9 - 2.5 * a).double().eval()
    adv, kept = adversarial.explanation_attack(
        net, x, PLAIN, lambda i, c: i.sum(1), "pgd", eps=8 * a, iterations=10
    )
    assert kept.tolist() == [2, 2]  # the third step would flip the label: rejected, stop
    expected = x.clone()
    expected[:, 0, 0, 0] = 0.9 - 2 * a  # sign(0) = 0: the other pixels do not move
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_random_floor_keeps_the_label_and_the_bound() -> None:
    net = _tanh_net()
    x = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    adv, kept = adversarial.explanation_attack(
        net, x, PLAIN, lambda i, c: i.sum(1), "random", eps=2 / 255, iterations=6
    )
    with torch.no_grad():
        assert torch.equal(net(adv).argmax(1), net(x).argmax(1))
    assert float((adv - x).abs().max()) <= 2 / 255 + 1e-12
    assert kept.max() > 0


@pytest.mark.parametrize("kind", ["topk", "com"])
def test_white_box_attacks_move_the_map_more_than_noise(kind) -> None:
    net = _tanh_net(8)
    cam = build_method(net, "grad-cam", "0")
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    c = sacam.scores.predict(net, x)
    clean = cam(x, c)
    fn = lambda i, t: cam.explain_graph(i, t).maps  # noqa: E731
    common = dict(eps=16 / 255, iterations=16, k=5, classes=c)
    adv, _ = adversarial.explanation_attack(net, x, PLAIN, fn, kind, **common)
    noise, _ = adversarial.explanation_attack(net, x, PLAIN, fn, "random", **common)
    measure = "topk" if kind == "topk" else "com_shift"
    moved = adversarial_metrics.compare_maps(clean, cam(adv, c), 5)[measure].nanmean()
    floor = adversarial_metrics.compare_maps(clean, cam(noise, c), 5)[measure].nanmean()
    assert (moved < floor) if kind == "topk" else (moved > floor)


def test_swept_values_are_named_per_eps_with_their_direction() -> None:
    info = metric_info("adversarial")
    names = written_names(info, (0.5 / 255, 2 / 255))
    assert "adv_fgsm_topk@0.5" in names and "adv_pgd_com_shift@2" in names
    assert arrow("adv_fgsm_topk@2") == "↑" and arrow("adv_pgd_com_shift@0.5") == "↓"
    assert value_info("adv_fgsm_topk") is None  # a swept value always carries its ε
    assert value_info("xattack_white_box") is not None
    assert "ε = 2/255" in value_info("adv_fgsm_ssim@2").description


def test_runner_writes_one_row_per_eps_and_resumes(tmp_path) -> None:
    data = colour_folder(tmp_path, n=3)
    out = tmp_path / "out"
    kw = dict(
        metrics=["adversarial", "explanation_attack"],
        epsilons=(1 / 255, 4 / 255),
        iterations=2,
        adv_iterations=2,
    )
    cfg = run_config(data, out, **kw)
    cfg.methods = ["grad-cam", "score-cam"]
    summary = sacam.evaluation.run_benchmark(cfg, progress=False)
    rows = list(csv.DictReader((out / "results.csv").open()))
    per_pair = {}
    for r in rows:
        per_pair.setdefault((r["image"], r["method"]), []).append(r["metric"])
    expected = {
        *written_names(metric_info("adversarial"), cfg.epsilons),
        *written_names(metric_info("explanation_attack"), cfg.epsilons),
        "time_s",
    }
    assert len(per_pair) == 6
    for metrics in per_pair.values():
        assert sorted(metrics) == sorted(expected)  # each exactly once
    white = {(r["method"]): float(r["value"]) for r in rows if r["metric"] == "xattack_white_box"}
    assert white == {"grad-cam": 1.0, "score-cam": 0.0}
    table = summary["table"]["grad-cam"]
    assert table["adv_fgsm_topk@4"]["higher_is_better"] is True
    assert table["xattack_topk_com_shift@1"]["higher_is_better"] is False
    assert "adv_fgsm_topk@1 ↑" in (out / "summary.md").read_text()
    # same settings again: nothing recomputed, nothing duplicated
    again = sacam.evaluation.run_benchmark(cfg, progress=False)
    assert len(list(csv.DictReader((out / "results.csv").open()))) == len(rows)
    assert again["table"]["grad-cam"]["adv_fgsm_topk@4"]["n"] == 3
