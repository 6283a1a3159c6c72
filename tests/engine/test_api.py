"""The stable surface, targets, layers and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam.errors import InputError, LayerError, MethodError, ModelError, TargetError
from tests.support.nets import small_cnn


def test_list_methods_has_the_first_methods() -> None:
    names = sacam.list_methods()
    assert {"cam", "grad-cam", "grad-cam++"} <= set(names)
    assert all(n == n.lower() and "_" not in n and " " not in n for n in names)


def test_unknown_method_lists_valid_ones(cnn, images) -> None:
    with pytest.raises(MethodError, match="valid methods: .*grad-cam"):
        sacam.explain(cnn, images, method="gradcam")


def test_unknown_option_is_refused(cnn, images) -> None:
    with pytest.raises(MethodError, match="does not accept option.*bogus"):
        sacam.explain(cnn, images, method="grad-cam", bogus=1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"method": "sa-cam", "gama": 1.0}, r"method 'sa-cam' .* gama \(did you mean gamma\?\)"),
        (
            {"method": "refine-cam", "base_options": {"variannt": "paper"}},
            r"base 'grad-cam\+\+' .* variannt \(did you mean variant\?\); it accepts: variant",
        ),
        (
            {"method": "sa-cam", "base": "gradpp", "base_options": {"varaint": "paper"}},
            r"base 'grad-cam\+\+' .* varaint \(did you mean variant\?\)",
        ),
        (
            {"method": "finer-cam", "base_options": {"fusion": "mean"}},
            "fusion in base_options: the base shares finer-cam's engine options",
        ),
    ],
)
def test_one_option_check_names_close_options(call, message, cnn) -> None:
    """sacam.explain, base methods' options and SA-CAM's base share one check."""
    with pytest.raises(MethodError, match=message):
        sacam.build_method(cnn, **call)


def test_sa_cam_builds_its_base_through_the_registry(cnn) -> None:
    cam = sacam.build_method(
        cnn, "sa-cam", "4", base="gradpp", base_options={"variant": "torchcam"}
    )
    base = cam.base
    assert type(base) is sacam.get_method("grad-cam++")
    assert (base.model, base.layer, base.variant) == (cnn, "4", "torchcam")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(3, 16, 16), "unsqueeze"),
        (torch.randint(0, 255, (1, 3, 16, 16)), "floating point"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
        ([[1.0]], "torch.Tensor"),
        (torch.rand(0, 3, 16, 16), "empty"),
    ],
)
def test_bad_images(bad, message, cnn) -> None:
    with pytest.raises(InputError, match=message):
        sacam.explain(cnn, bad)


def test_bad_targets(cnn, images) -> None:
    with pytest.raises(TargetError, match="out of range.*5 classes"):
        sacam.explain(cnn, images, targets=7)
    with pytest.raises(TargetError, match="2 target classes for a batch of 3"):
        sacam.explain(cnn, images, targets=[0, 1])
    with pytest.raises(TargetError, match=r"one score per sample, shape \(3,\)"):
        sacam.explain(cnn, images, targets=lambda out: out.sum())
    with pytest.raises(TargetError, match="not a bool"):
        sacam.explain(cnn, images, targets=True)


@pytest.mark.parametrize(
    ("text", "names", "n", "expected"),
    [
        ("TABBY ", ["dog", "tabby"], None, 1),
        ("1", ["dog", "tabby"], None, 1),
        ("7", [], None, 7),  # no names, no count: the engine checks the range later
        ("7", [], 8, 7),
        ("8", [], 8, "--target 8 is out of range: the model has 8 classes"),
        ("2", ["dog", "tabby"], None, "out of range: the model has 2 classes"),
        ("-1", ["dog", "tabby"], None, "out of range"),
        ("cat", ["dog", "tabby"], None, "--target 'cat' is neither a class index nor"),
        ("", ["dog"], None, "neither"),
    ],
)
def test_parse_class(text, names, n, expected) -> None:
    from sacam.targets import parse_class

    if isinstance(expected, int):
        assert parse_class(text, names, n, what="--target") == expected
    else:
        with pytest.raises(TargetError, match=expected):
            parse_class(text, names, n, what="--target")


def test_callable_targets_match_class_targets(cnn, images) -> None:
    a = sacam.explain(cnn, images, targets=2)
    b = sacam.explain(cnn, images, targets=sacam.ClassifierOutputTarget(2))
    c = sacam.explain(cnn, images, targets=lambda out: out[:, 2])
    per_sample = [sacam.ClassifierOutputTarget(2)] * 3
    d = sacam.explain(cnn, images, targets=[lambda o, t=t: t(o)[0] for t in per_sample])
    for other in (b, c, d):
        assert torch.allclose(a, other, atol=1e-6)


def test_segmentation_output_with_callable_target() -> None:
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    mask = torch.zeros(8, 8)
    mask[2:5, 2:5] = 1
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(TargetError, match="no top-1 class"):
        sacam.explain(seg, x, layer="1")
    maps = sacam.explain(seg, x, layer="1", targets=sacam.SemanticSegmentationTarget(1, mask))
    assert maps.shape == (2, 8, 8) and torch.isfinite(maps).all()


def test_layer_by_module_name_and_auto(cnn, images) -> None:
    auto = sacam.explain_full(cnn, images)
    assert auto.layers == ["5"]  # dropout after the last ReLU: last 4-D output, spatial > 1
    by_name = sacam.explain(cnn, images, layer="5")
    by_module = sacam.explain(cnn, images, layer=cnn[5])
    assert torch.allclose(auto.maps, by_name) and torch.allclose(by_name, by_module)


def test_unknown_layer_lists_valid_ones(cnn, images) -> None:
    with pytest.raises(LayerError, match=r"no layer named '9'.*layers with spatial outputs: 0, 1"):
        sacam.explain(cnn, images, layer="9")
    with pytest.raises(LayerError, match="not a submodule"):
        sacam.explain(cnn, images, layer=nn.ReLU())
    with pytest.raises(LayerError, match="runs 1 time"):
        sacam.explain(cnn, images, layer="4@3")


def test_layer_off_the_output_path_is_refused(images) -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = small_cnn()
            self.aux = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.aux(x)
            return self.body(x)

    with pytest.raises(LayerError, match="does not depend on"):
        sacam.explain(TwoHeads(), images, method="grad-cam", layer="aux")


def test_shared_module_called_twice_uses_last_call_by_default() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.down = nn.Conv2d(4, 6, 3, stride=2, padding=1)
            self.fc = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.stem(x))
            x = self.act(self.down(x))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    net, x = Shared(), torch.rand(2, 3, 16, 16)
    assert sacam.explain_full(net, x).layers == ["act@1"]
    assert sacam.explain_full(net, x, layer="act").layers == ["act@1"]
    first = sacam.explain_full(net, x, layer="act@0", upsample=False)
    assert first.maps.shape == (2, 16, 16)
    last = sacam.explain_full(net, x, layer="act@-1", upsample=False)
    assert last.maps.shape == (2, 8, 8)
    labels = [label for label, _ in sacam.list_layers(net, x)]
    assert labels == ["stem", "act@0", "down", "act@1", "fc"]


def test_several_layers_give_one_map_each_and_a_fused_map(cnn, images) -> None:
    out = sacam.explain_full(cnn, images, layer=["1", "4"])
    assert out.layers == ["1", "4"]
    assert out.layer_maps["1"].shape == out.layer_maps["4"].shape == (3, 16, 16)
    fused = torch.maximum(out.layer_maps["1"], out.layer_maps["4"])
    assert torch.allclose(out.maps, sacam.explanation.normalize_maps(fused)[0], atol=1e-6)
    mean = sacam.explain_full(cnn, images, layer=["1", "4"], fusion="mean")
    assert not torch.allclose(mean.maps, out.maps)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_model_is_refused_with_a_remedy(cnn, images) -> None:
    scripted = torch.jit.script(cnn.eval())
    with pytest.raises(ModelError, match="torch.export"):
        sacam.explain(scripted, images)


def test_gradients_flow_only_from_the_layer(cnn, images) -> None:
    """Parameters stay frozen during the call, so no .grad is ever populated."""
    x = images.clone().requires_grad_(True)
    sacam.explain(cnn, x)
    assert x.grad is None
    assert all(p.grad is None for p in cnn.parameters())


def test_explanation_reports_probability(cnn, images) -> None:
    out = sacam.explain_full(cnn, images)
    probs = torch.softmax(cnn.eval()(images), 1).max(1).values
    assert torch.allclose(out.probabilities, probs, atol=1e-6)


def test_option_defaults_come_from_the_most_derived_constructor() -> None:
    """One reading of a method's options serves the CLI, the docs and the option check."""
    import inspect

    class Base(sacam.BaseCAM):
        def __init__(self, model, layer=None, *, alpha: float = 1.0, beta: int, **kw) -> None:
            super().__init__(model, layer, **kw)

    class Derived(Base):
        def __init__(self, model, layer=None, *, alpha: float = 2.0, gamma: str = "g", **kw):
            super().__init__(model, layer, alpha=alpha, beta=3, **kw)

    defaults = Derived.option_defaults()
    assert list(defaults)[:3] == ["alpha", "gamma", "beta"]
    assert defaults["alpha"] == 2.0 and defaults["gamma"] == "g"
    assert defaults["beta"] is inspect.Parameter.empty
    assert defaults["fusion"] == "max"  # the engine's own options come last
    assert Derived.option_names() == list(defaults)
    sa = sacam.get_method("sa-cam").option_defaults()
    assert {"base", "operator"} <= set(sa) and "model" not in sa and "layer" not in sa
