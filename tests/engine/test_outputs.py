"""Models whose forward returns a tuple, list, dict or ``.logits`` object, and ``output_transform``.

Every wrapper below runs the same small CNN and returns its logits inside another
structure; the maps and metrics must equal those of the plain CNN exactly (the same
computation), for every registered method.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import sacam
from sacam._locks import model_lock
from sacam._outputs import LogitsModel, logits_model, to_logits, unwrap
from sacam.evaluation.adversarial import explanation_attack
from sacam.evaluation.faithfulness import confidence_change, deletion, insertion
from sacam.evaluation.road import road
from sacam.evaluation.sanity import sanity_check
from sacam.preprocess import Preprocess
from sacam.scores import predict
from tests.support.nets import small_cnn

# token-model methods (family "transformer") read outputs on a ViT: tests/test_legrad.py
METHODS = [m for m in sacam.list_methods() if sacam.method_info(m).family != "transformer"]


@dataclass
class HFOutput:
    """Like a Hugging Face ``ModelOutput``: fields, ``logits`` among them."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]


Heads = namedtuple("Heads", ["features", "logits"])


class Wrapped(nn.Module):
    """Runs ``net`` and packs its logits as ``kind`` says."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net = net
        self.kind = kind

    def forward(self, x: torch.Tensor) -> object:
        logits = self.net(x)
        aux = x.mean(dim=(1, 2, 3))
        if self.kind == "tuple":
            return logits, aux
        if self.kind == "list":
            return [logits, aux, "note"]
        if self.kind == "dict":
            return {"aux": aux, "logits": logits}
        if self.kind == "dict-single":
            return {"out": logits, "extra": None}
        if self.kind == "hf":
            return HFOutput(loss=None, logits=logits, hidden_states=(x,))
        if self.kind == "namedtuple":  # logits second: .logits wins over the first element
            return Heads(aux, logits)
        return {"heads": [aux, {"cls": logits}]}  # "custom": needs output_transform


def custom_transform(out: object) -> torch.Tensor:
    """The logits of the "custom" structure."""
    assert isinstance(out, dict)
    return out["heads"][1]["cls"]


KINDS = ["tuple", "list", "dict", "dict-single", "hf", "namedtuple", "custom"]


def _options(method: str, kind: str) -> dict[str, object]:
    options: dict[str, object] = {}
    if kind == "custom":
        options["output_transform"] = custom_transform
    if "inputs_per_pass" in sacam.get_method(method).option_names():
        options["inputs_per_pass"] = 64  # "auto" is timed per model: equal up to rounding only
    return options


_PLAIN: dict[str, torch.Tensor] = {}


def _plain_maps(method: str, images: torch.Tensor) -> torch.Tensor:
    if method not in _PLAIN:
        options = _options(method, "tuple")
        _PLAIN[method] = sacam.explain(small_cnn(), images, method, targets=[1, 3], **options)
    return _PLAIN[method]


@pytest.fixture
def pair_images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))


# several methods of each family, with every kind of output
SAMPLE = ["grad-cam", "layer-cam", "score-cam", "ablation-cam", "eigen-cam", "eigen-grad-cam"]
SAMPLE += ["sa-cam", "fullgrad"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reads_a_dict_output(method: str, pair_images) -> None:
    model = Wrapped(small_cnn(), "dict")
    maps = sacam.explain(model, pair_images, method, targets=[1, 3], **_options(method, "dict"))
    assert torch.equal(maps, _plain_maps(method, pair_images))


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "dict"])
@pytest.mark.parametrize("method", SAMPLE)
def test_maps_equal_the_plain_models(method: str, kind: str, pair_images) -> None:
    model = Wrapped(small_cnn(), kind)
    maps = sacam.explain(model, pair_images, method, targets=[1, 3], **_options(method, kind))
    assert torch.equal(maps, _plain_maps(method, pair_images))


@pytest.mark.parametrize("method", ["grad-cam", "score-cam", "eigen-grad-cam", "sa-cam"])
def test_explanation_reports_the_logits(method: str, pair_images) -> None:
    net = small_cnn()
    options = _options(method, "hf")
    plain = sacam.explain_full(net, pair_images, method, **options)
    wrapped = sacam.explain_full(Wrapped(net, "hf"), pair_images, method, **options)
    assert torch.equal(wrapped.class_idx, plain.class_idx)
    assert torch.equal(wrapped.scores, plain.scores)
    assert torch.equal(wrapped.probabilities, plain.probabilities)
    with torch.no_grad():
        top = net(pair_images).argmax(1)
    assert torch.equal(wrapped.class_idx, top)


def test_callable_targets_see_the_converted_output(pair_images) -> None:
    seen: list[tuple[int, ...]] = []

    def target(out: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(out.shape))
        return out[:, 2]

    net = small_cnn()
    maps = sacam.explain(
        Wrapped(net, "custom"),
        pair_images,
        "grad-cam",
        targets=target,
        output_transform=custom_transform,
    )
    assert seen and all(s == (2, 5) for s in seen)
    assert torch.equal(maps, sacam.explain(net, pair_images, "grad-cam", targets=2))


def test_tta_reads_the_output(pair_images) -> None:
    net = small_cnn()
    plain = sacam.explain(net, pair_images, "grad-cam", tta=True)
    assert torch.equal(
        sacam.explain(Wrapped(net, "tuple"), pair_images, "grad-cam", tta=True), plain
    )


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["grad-cam", "score-cam", "fullgrad", "guided-grad-cam"])
def test_user_model_is_left_unchanged_and_its_hooks_fire(method: str, pair_images) -> None:
    model = Wrapped(small_cnn(), "tuple").train()
    calls: list[int] = []
    handle = model.net[2].register_forward_hook(lambda *_: calls.append(1))
    attrs, children = dict(vars(model)), list(model.named_modules())
    flags = [m.training for m in model.modules()]
    sacam.explain(model, pair_images, method, **_options(method, "tuple"))
    assert calls, "the user's own forward hook did not fire"
    assert _hook_count(model) == 1  # only the user's hook is left
    handle.remove()
    assert dict(vars(model)).keys() == attrs.keys()
    assert list(model.named_modules()) == children
    assert [m.training for m in model.modules()] == flags
    assert all(p.requires_grad for p in model.parameters())


def test_a_dict_without_logits_names_its_keys() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            a = self.conv(x).mean(dim=(2, 3))
            return {"boxes": a, "scores": a * 2}

    with pytest.raises(
        sacam.TargetError,
        match=r"\['boxes', 'scores'\].*output_transform=lambda out: out\['boxes'\]",
    ):
        sacam.explain(TwoHeads(), torch.rand(1, 3, 8, 8), "grad-cam", layer="conv")
    maps = sacam.explain(
        TwoHeads(),
        torch.rand(1, 3, 8, 8),
        "grad-cam",
        layer="conv",
        output_transform=lambda out: out["scores"],
    )
    assert maps.shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("output", "pattern"),
    [
        ("text", r"returned a str"),
        ((), r"a tuple of \(\)"),
        (("a", torch.zeros(1, 2)), r"a tuple of \(str, Tensor\).*lambda out: out\[1\]"),
        ({}, r"a dict with keys \[\]"),
        ({"logits": "x"}, r"a dict with keys \['logits'\]"),
    ],
)
def test_unreadable_outputs_give_a_clear_error(output: object, pattern: str) -> None:
    with pytest.raises(sacam.TargetError, match=pattern) as info:
        to_logits(output)
    assert "output_transform=" in str(info.value)


def test_output_transform_must_return_a_tensor_and_be_callable(pair_images) -> None:
    net = Wrapped(small_cnn(), "dict")
    with pytest.raises(sacam.TargetError, match="output_transform returned list, not a tensor"):
        sacam.explain(net, pair_images, "grad-cam", output_transform=lambda out: [1])
    with pytest.raises(sacam.TargetError, match="output_transform must be a callable"):
        sacam.build_method(net, "grad-cam", output_transform="logits")


def test_the_rules_in_order() -> None:
    t, u = torch.zeros(1, 2), torch.ones(1, 2)
    assert to_logits(t) is t
    assert to_logits(Heads(u, t)) is t  # .logits before the first element
    assert to_logits({"a": u, "logits": t}) is t
    assert to_logits({"a": u, "b": 3}) is u  # the only tensor value
    assert to_logits([t, u]) is t
    assert to_logits(t, lambda out: out + 1).tolist() == [[1.0, 1.0]]


def test_the_wrapper_shares_the_models_lock_and_is_not_nested() -> None:
    net = small_cnn()
    wrapper = logits_model(net)
    assert isinstance(wrapper, LogitsModel) and wrapper.model is net
    assert logits_model(wrapper) is wrapper and unwrap(wrapper) is net
    assert model_lock(wrapper) is model_lock(net)
    assert list(wrapper.parameters()) == list(net.parameters())


def test_predict_reads_the_output(pair_images) -> None:
    net = small_cnn()
    expected = predict(net, pair_images)
    assert torch.equal(predict(Wrapped(net, "list"), pair_images), expected)
    custom = predict(Wrapped(net, "custom"), pair_images, output_transform=custom_transform)
    assert torch.equal(custom, expected)


PRE = Preprocess(size=16, resize="squash", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize("kind", ["tuple", "hf", "custom"])
def test_metrics_equal_the_plain_models(kind: str, pair_images) -> None:
    net = small_cnn()
    model = Wrapped(net, kind)
    extra = {"output_transform": custom_transform} if kind == "custom" else {}
    maps = sacam.explain(net, pair_images, "grad-cam")
    a = confidence_change(net, pair_images, maps, preprocess=PRE)
    b = confidence_change(model, pair_images, maps, preprocess=PRE, **extra)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for fn in (deletion, insertion):
        c = fn(net, pair_images, maps, steps=8, inputs_per_pass=4)
        d = fn(model, pair_images, maps, steps=8, inputs_per_pass=4, **extra)
        assert torch.equal(c.curves, d.curves)
    r1 = road(net, pair_images, maps, PRE, percentages=(0.2, 0.6))
    r2 = road(model, pair_images, maps, PRE, percentages=(0.2, 0.6), **extra)
    assert torch.equal(r1.morf, r2.morf) and torch.equal(r1.lerf, r2.lerf)
    map_fn = lambda i, c: i.mean(1).abs()  # noqa: E731  (differentiable, model-free)
    for how in ("pgd", "topk"):
        x1, k1 = explanation_attack(net, pair_images, PRE, map_fn, how, iterations=2, k=20)
        x2, k2 = explanation_attack(
            model, pair_images, PRE, map_fn, how, iterations=2, k=20, **extra
        )
        assert torch.equal(x1, x2) and torch.equal(k1, k2)


def test_sanity_check_with_output_transform(pair_images) -> None:
    net = small_cnn()
    model = Wrapped(net, "custom")

    def explain_plain(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return sacam.explain(m, x, "grad-cam", targets=1)

    def explain_wrapped(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return sacam.explain(m, x, "grad-cam", targets=1, output_transform=custom_transform)

    a = sanity_check(net, pair_images, explain_plain, max_layers=2)
    b = sanity_check(model, pair_images, explain_wrapped, max_layers=2)
    assert [f"net.{n}" for n in a.layers] == b.layers
    assert torch.equal(a.spearman_abs, b.spearman_abs)
