"""Edge cases: per-sample callables in perturbation methods, units, bad inputs, probes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam.errors import InputError, MethodError, ModelError, TargetError
from sacam.evaluation import faithfulness, road
from sacam.preprocess import Preprocess
from tests.support.nets import F64_ATOL, in_double, small_cnn


@pytest.mark.parametrize("method", ["score-cam", "ablation-cam"])
def test_per_sample_callables_in_perturbation_methods(method, images) -> None:
    net, images = in_double(small_cnn(), images)  # see F64_ATOL in conftest
    by_class = sacam.explain(net, images, method=method, targets=[0, 1, 2])
    callables = [lambda o, c=c: o[:, c].sum() for c in (0, 1, 2)]
    by_callable = sacam.explain(net, images, method=method, targets=callables)
    if method == "ablation-cam":  # both on the logit: same weights
        torch.testing.assert_close(by_class, by_callable, rtol=0, atol=F64_ATOL)
    single = sacam.explain(net, images[1:2], method=method, targets=[callables[1]])
    torch.testing.assert_close(by_callable[1:2], single, rtol=0, atol=F64_ATOL)


def test_ablation_cam_with_a_softmax_target_uses_one_unit(images) -> None:
    net = small_cnn()
    logit = sacam.explain(net, images, method="ablation-cam", targets=2)
    soft = sacam.explain(
        net, images, method="ablation-cam", targets=sacam.ClassifierOutputSoftmaxTarget(2)
    )
    assert torch.allclose(logit, soft, atol=1e-5)


def test_class_idx_is_an_ordinary_tensor(images) -> None:
    out = sacam.explain_full(small_cnn(), images, method="eigen-cam")
    out.class_idx += 0  # would raise for an inference tensor


def test_nan_output_is_a_clear_error(images) -> None:
    net = nn.Sequential(small_cnn(), nn.Softplus(beta=float("nan")))
    with pytest.raises(ModelError, match="NaN"):
        sacam.explain(net, images, layer="0.4")


def test_dtype_mismatch_is_a_clear_error(images) -> None:
    with pytest.raises(InputError, match="float64"):
        sacam.explain(small_cnn(), images.double())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": float("inf")}, "temperature"),
        ({"hops": True}, "hops"),
        ({"base_options": {"nope": 1}}, "does not accept option"),
    ],
)
def test_more_bad_sacam_options(options, message, images) -> None:
    with pytest.raises(MethodError, match=message):
        sacam.explain(small_cnn(), images, method="sa-cam", **options)


def test_metric_inputs_are_checked(images) -> None:
    net = small_cnn()
    pre = Preprocess(size=16)
    small_maps = torch.rand(3, 8, 8)
    with pytest.raises(InputError, match="input's size"):
        road.road(net, images, small_maps, pre)
    with pytest.raises(TargetError, match="out of range"):
        faithfulness.deletion(net, images, torch.rand(3, 16, 16), targets=9, steps=4)
    with pytest.raises(InputError, match="inputs_per_pass"):
        faithfulness.insertion(net, images, torch.rand(3, 16, 16), steps=4, inputs_per_pass=0)


def test_partial_last_step_is_weighted_by_its_width() -> None:
    net = small_cnn()
    x = torch.rand(1, 3, 12, 12)
    res = faithfulness.deletion(
        net, x, torch.rand(1, 12, 12), targets=0, steps=5
    )  # step 29, 144 px
    xs = torch.tensor([0, 29, 58, 87, 116, 144], dtype=torch.float64) / 144
    expect = torch.trapezoid(res.curves[0].double(), xs)
    assert float(res.auc[0]) == pytest.approx(float(expect), abs=1e-6)


def test_list_layers_does_not_touch_batch_norm_statistics() -> None:
    net = small_cnn().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sacam.list_layers(net, torch.rand(2, 3, 16, 16))
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
