"""Checks every registered method must pass (parametrised over the registry)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam.core import BaseCAM
from sacam.errors import MethodError
from tests.support.nets import F64_ATOL, in_double, small_cnn

# methods for token models (family "transformer") have their shared checks on a small ViT
# in tests/test_legrad.py; these run on small CNNs
METHODS = [m for m in sacam.list_methods() if sacam.method_info(m).family != "transformer"]

# Narrow adaptations of test_constant_map_is_zero_and_flagged (see there):
# - these methods weight each activation by its own gradient, position by position, so
#   constant activations alone do not make their map constant (the gradient still varies
#   with position); the check also makes the gradient constant (zero) for them.
ELEMENTWISE_GRADIENT = {"layer-cam", "hires-cam", "grad-cam-elementwise", "eigen-grad-cam"}
ELEMENTWISE_GRADIENT |= {"seg-eigen-cam"}
# - these methods weigh positions by the network after layer 0 (FullGrad: its gradients
#   and biases at every layer; Recipro-CAM: its response to each position's activations),
#   which zero padding makes vary near the borders even for constant activations; the
#   check zeroes the next convolution's weights as well, so that response is constant.
WHOLE_NETWORK = {"fullgrad", "recipro-cam"}
# - a random map ignores the model by design: it is never constant, so it must not be
#   flagged (the check then verifies exactly that).
MODEL_FREE = {"random"}
# - these methods build their map at the input's resolution (gradients with respect to
#   the input), so ``upsample=False`` keeps that resolution rather than a layer's.
INPUT_RESOLUTION = {"guided-grad-cam", "fullgrad", "sess"}
# - these methods explain several stages by default and fuse them at the shallowest
#   stage's resolution (the small CNN's 16x16 layer "1"), so ``upsample=False`` keeps that.
MULTI_STAGE = {"poly-cam"}


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("method", sacam.list_methods())
def test_no_method_overrides_explain(method) -> None:
    """Every method runs the engine's template; its own steps are the documented hooks."""
    cls = sacam.get_method(method)
    assert cls.explain is BaseCAM.explain
    assert cls.__call__ is BaseCAM.__call__


@pytest.mark.parametrize("method", METHODS)
def test_shape_range_and_no_nan(method, cnn, images) -> None:
    maps = sacam.explain(cnn, images, method=method)
    assert maps.shape == (3, 16, 16)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps.device == images.device
    low = sacam.explain(cnn, images, method=method, upsample=False)
    assert low.shape == ((3, 16, 16) if method in INPUT_RESOLUTION | MULTI_STAGE else (3, 8, 8))


@pytest.mark.parametrize("method", METHODS)
def test_constant_map_is_zero_and_flagged(method) -> None:
    net = small_cnn()
    with torch.no_grad():
        net[0].weight.zero_()  # every activation of layer 0 is its bias: constant maps
        if method in ELEMENTWISE_GRADIENT | WHOLE_NETWORK:
            net[2].weight.zero_()  # and the gradient at layer 1 is 0 (constant) too
    x = torch.rand(2, 3, 8, 8)
    out = sacam.explain_full(net, x, method=method, layer="1") if method != "cam" else None
    if out is None:  # CAM needs a layer feeding the fc directly
        net2 = small_cnn()
        with torch.no_grad():
            net2[2].weight.zero_()
        out = sacam.explain_full(net2, x, method=method, layer="4")
    assert torch.isfinite(out.maps).all()
    if method in MODEL_FREE:  # adapted: a random map is not constant and is not flagged
        assert not out.constant.any() and (out.maps.amax(dim=(1, 2)) == 1).all()
        return
    assert out.constant.all()
    assert (out.maps == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_model_left_as_it_was(method, cnn, images) -> None:
    cnn.train()
    cnn[5].eval()  # a mixed state must come back exactly
    cnn[0].weight.requires_grad_(False)
    before_modes = [m.training for m in cnn.modules()]
    before_grads = [p.requires_grad for p in cnn.parameters()]
    before_state = {k: v.clone() for k, v in cnn.state_dict().items()}
    sacam.explain(cnn, images, method=method)
    assert [m.training for m in cnn.modules()] == before_modes
    assert [p.requires_grad for p in cnn.parameters()] == before_grads
    assert _hooks(cnn) == 0
    for k, v in cnn.state_dict().items():
        assert torch.equal(v, before_state[k]), k  # BN running stats untouched
    assert all(p.grad is None for p in cnn.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_model_restored_after_exception(method, cnn, images) -> None:
    cnn.train()
    before_modes = [m.training for m in cnn.modules()]
    before_grads = [p.requires_grad for p in cnn.parameters()]

    class Boom(RuntimeError):
        pass

    def raising_hook(*_):
        raise Boom("inside the forward pass")

    handle = cnn[6].register_forward_hook(raising_hook)
    try:
        with pytest.raises(Boom):
            sacam.explain(cnn, images, method=method, layer="4")
    finally:
        handle.remove()
    assert [m.training for m in cnn.modules()] == before_modes
    assert [p.requires_grad for p in cnn.parameters()] == before_grads
    assert _hooks(cnn) == 0


@pytest.mark.parametrize("method", METHODS)
def test_nothing_of_the_call_stays_on_the_method(method, cnn, images) -> None:
    cam = sacam.build_method(cnn, method)
    cam(images)
    leftovers = [k for k, v in vars(cam).items() if isinstance(v, torch.Tensor)]
    assert leftovers == []
    assert _hooks(cnn) == 0


# In float64 even Group-CAM, which divides float32 rounding by a raw-map range as small as
# 2.6e-5 (tests/groupcam_float.py derives that bound), stays ~1e4 x 1e-16 << F64_ATOL.
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_single_calls(method, cnn, images) -> None:
    net, x = in_double(cnn, images)  # see F64_ATOL: two computations, compared in float64
    batch = sacam.explain(net, x, method=method)
    singles = torch.cat([sacam.explain(net, x[i : i + 1], method=method) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("method", METHODS)
def test_inplace_relu_model_gives_the_same_maps(method, images) -> None:
    plain = small_cnn(inplace=False)
    inplace = small_cnn(inplace=True)
    # a fixed batch size: an "auto" plan is timed per model and may pick another memory
    # format for each, moving float rounding (tests/test_speed_options.py covers that)
    opts = (
        {"inputs_per_pass": 8}
        if "inputs_per_pass" in sacam.get_method(method).option_names()
        else {}
    )
    for layer in ("0", "3"):  # outputs followed by an in-place ReLU
        lay = layer if method != "cam" else "4"
        a = sacam.explain(plain, images, method=method, layer=lay, **opts)
        b = sacam.explain(inplace, images, method=method, layer=lay, **opts)
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_explicit_targets(method, cnn, images) -> None:
    a = sacam.explain_full(cnn, images, method=method, targets=[0, 1, 2])
    assert a.class_idx.tolist() == [0, 1, 2]
    b = sacam.explain(cnn, images, method=method, targets=torch.tensor([0, 1, 2]))
    assert torch.allclose(a.maps, b, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_registry_entry_is_documented(method) -> None:
    info = sacam.method_info(method)
    assert info.paper and info.url.startswith("https://") and info.description
    assert info.cls.__doc__ and info.url in info.cls.__doc__
    assert info.cls.name == method


# ------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("xgrad-cam", {"variant": "x"}, "variant"),
        ("smooth-grad-cam++", {"n_samples": 0}, "n_samples"),
        ("smooth-grad-cam++", {"seed": 1.5}, "seed"),
        ("ss-cam", {"std": -1.0}, "std"),
        ("is-cam", {"variant": "softmax"}, "variant"),
        ("ablation-cam", {"inputs_per_pass": 0}, "inputs_per_pass"),
        ("group-cam", {"denoise_quantile": 2.0}, "denoise_quantile"),
        ("group-cam", {"blur_kernel": 4}, "blur_kernel"),
        ("eigen-cam", {"center": "yes"}, "center"),
        ("random", {"variant": "pixels"}, "variant"),
    ],
)
def test_bad_options_are_refused(method: str, options: dict, message: str) -> None:
    with pytest.raises(MethodError, match=message):
        sacam.build_method(small_cnn(), method, **options)
