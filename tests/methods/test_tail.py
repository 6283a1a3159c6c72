"""The network after the layer, fed once per batch ("expand") or once per row ("repeat").

Recipro-CAM, FD-CAM and Ablation-CAM share ``sacam.methods._tail``: every strategy gives
the same maps, "auto" falls back to "repeat" where "expand" cannot run, "expand" runs the
layers before the target once per batch of rows, and the default model allows it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sacam
from sacam.errors import MethodError
from tests.support.nets import F64_ATOL, GapNet, in_double, small_cnn

TAIL_METHODS = ["recipro-cam", "fd-cam", "ablation-cam"]


@pytest.mark.parametrize("method", TAIL_METHODS)
def test_strategies_and_batch_sizes_agree(method: str, cnn, images) -> None:
    net, x = in_double(cnn, images)
    ref = sacam.explain(net, x, method=method, layer="3", strategy="repeat", inputs_per_pass=64)
    for strategy, batch in [("expand", 64), ("expand", 5), ("repeat", 7), ("auto", 3)]:
        m = sacam.explain(
            net, x, method=method, layer="3", strategy=strategy, inputs_per_pass=batch
        )
        torch.testing.assert_close(m, ref, rtol=0, atol=F64_ATOL)


class _Counted(nn.Module):
    """small_cnn with a count of the rows its first convolution sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize(("method", "rows_per_image"), [("ablation-cam", 8), ("fd-cam", 16)])
def test_expand_runs_the_front_once_per_batch(method: str, rows_per_image: int, images) -> None:
    # small_cnn's layer net.1 has 8 channels: Ablation-CAM edits 8 rows per image, FD-CAM
    # 16 (each group on, then off); with inputs_per_pass=3, "expand" feeds ⌈rows / 3⌉ single
    # images, "repeat" every row. The engine's clean passes are the same for both, so the
    # difference counts the tail passes alone (after a first call, which also probes
    # the model's memory use).
    counts = {}
    for strategy in ("expand", "repeat"):
        net = _Counted().eval()
        for _ in range(2):
            net.rows = 0
            sacam.explain(
                net, images, method=method, layer="net.1", strategy=strategy, inputs_per_pass=3
            )
        counts[strategy] = net.rows
    saved = images.shape[0] * (rows_per_image - math.ceil(rows_per_image / 3))
    assert counts["repeat"] - counts["expand"] == saved


class _CatAcross(nn.Module):
    """A skip connection concatenated across the target layer: expand cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x)
        z = torch.cat([self.c2(a), a], dim=1)
        return self.fc(z.mean(dim=(2, 3)))


class _InputBatchView(nn.Module):
    """Reads the batch size from its input (as efficientnet_lite_pytorch's ``view(bs, -1)``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, stride=4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = x.shape[0]
        return self.fc(self.relu(self.c1(x)).reshape(bs, -1))


@pytest.mark.parametrize("method", TAIL_METHODS)
@pytest.mark.parametrize(("net_cls", "layer"), [(_CatAcross, "c2"), (_InputBatchView, "relu")])
def test_auto_falls_back_to_repeat_where_expand_cannot_run(
    method: str, net_cls: type[nn.Module], layer: str, images
) -> None:
    net, x = in_double(net_cls(), images)
    with pytest.raises(MethodError, match="strategy='repeat'"):
        sacam.explain(net, x, method=method, layer=layer, strategy="expand")
    rep = sacam.explain(net, x, method=method, layer=layer, strategy="repeat")
    auto = sacam.explain(net, x, method=method, layer=layer, inputs_per_pass=5)
    assert rep.shape == (3, 16, 16) and torch.isfinite(rep).all()
    torch.testing.assert_close(auto, rep, rtol=0, atol=F64_ATOL)
    assert all(not mod._forward_hooks for mod in net.modules())


@pytest.mark.parametrize("method", TAIL_METHODS)
def test_bad_strategy_is_refused(method: str) -> None:
    with pytest.raises(MethodError, match="strategy must be 'auto', 'expand' or 'repeat'"):
        sacam.build_method(GapNet([[1.0, 1.0]]), method, strategy="tail")


def test_efficientnet_lite_gives_the_packages_logits_and_allows_expand() -> None:
    # sacam's EfficientNet-Lite flattens per row; same logits as the package's class, and
    # the tail methods run "expand" at the head (strategy="expand" raises if it cannot)
    from efficientnet_lite_pytorch import EfficientNet

    from sacam.models import ARCHITECTURES

    torch.manual_seed(0)
    ours = ARCHITECTURES["efficientnet-lite0"]().eval()
    theirs = EfficientNet.from_name("efficientnet-lite0").eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    for method, opts in [("ablation-cam", {"top_channels": 12}), ("fd-cam", {"top_channels": 6})]:
        exp = sacam.explain(ours, x, method=method, strategy="expand", inputs_per_pass=8, **opts)
        rep = sacam.explain(ours, x, method=method, strategy="repeat", inputs_per_pass=8, **opts)
        torch.testing.assert_close(exp, rep, rtol=0, atol=1e-5)


def test_auto_batch_feeds_expand_the_memory_cap_and_repeat_the_fastest(images, monkeypatch) -> None:
    # with inputs_per_pass="auto", whole passes ("repeat") take the tuner's best plan
    # (here 2) and expanded passes as many rows as fit the memory budget (here 5):
    # 8 rows per image -> 2 expanded passes, or 4 whole passes of 2 rows
    from sacam._speed.tuner import Plan, Tuner
    from sacam.methods import _perturb

    monkeypatch.setattr(_perturb, "unmeasured_rows", lambda *a: None)  # measure, always
    monkeypatch.setattr(_perturb, "measured_cap", lambda *a: 5)
    monkeypatch.setattr(_perturb, "expand_cap", lambda *a: 5)
    monkeypatch.setattr(_perturb, "tuner_for", lambda *a, **k: Tuner.fixed(Plan(2, False)))
    sizes = {}
    for strategy in ("expand", "repeat"):
        net = _Counted().eval()
        seen: list[int] = []
        net.net[0].register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.shape[0]))
        sacam.explain(net, images[:1], method="ablation-cam", layer="net.1", strategy=strategy)
        sizes[strategy] = seen[2:]  # after the engine's two clean passes
    assert sizes == {"expand": [1, 1], "repeat": [2, 2, 2, 2]}


@pytest.mark.parametrize("method", ["recipro-cam", "ablation-cam", "fd-cam"])
def test_rows_that_surely_fit_skip_the_memory_measurement(method, images, monkeypatch) -> None:
    # small_cnn on 16×16 at net.1 (8 × 16 × 16): every row of an image fits one expanded
    # pass by a pessimistic estimate, so no memory is measured and each image's rows go
    # in one pass; with a budget too small for that estimate, the memory is measured
    from sacam._speed import memory
    from sacam.methods import _perturb

    measured: list[int] = []
    real = memory.measure_memory

    def counting(*args, **kwargs):
        measured.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(memory, "measure_memory", counting)
    monkeypatch.setattr(memory, "_COSTS", type(memory._COSTS)())  # nothing cached
    monkeypatch.setenv("SACAM_CACHE_DIR", "")  # nor on disk
    net = _Counted().eval().double()  # float64: passes of other sizes round alike
    images = images.double()
    seen: list[int] = []
    net.net[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    one = sacam.explain(net, images[:1], method=method, layer="net.1", strategy="expand")
    rows = {"recipro-cam": 16 * 16, "ablation-cam": 8, "fd-cam": 16}[method]
    assert not measured and seen[2:] == [1]  # the front ran once for all the rows
    found = _perturb.unmeasured_rows(net, images[0], "net.1", 0, 1024.0, rows)
    assert found is not None and found[0] == rows
    assert _perturb.unmeasured_rows(net, images[0], "net.1", 0, 1e-3, rows) is None
    again = sacam.explain(
        net, images[:1], method=method, layer="net.1", strategy="expand", max_memory_mb=1e-3
    )
    assert measured  # a tight budget measures
    assert torch.allclose(one, again, atol=1e-9)  # other passes, the same map


def test_many_rows_go_in_passes_of_what_surely_fits(images, monkeypatch) -> None:
    # Recipro-CAM at net.1 on 16×16 edits 256 rows; with a budget where fewer but at
    # least 64 surely fit, the rows go in passes of that many, still unmeasured
    from sacam._speed import memory
    from sacam.methods import _perturb

    monkeypatch.setattr(memory, "measure_memory", lambda *a, **k: pytest.fail("measured"))
    net = _Counted().eval()
    budgets = [2.0**e for e in range(-4, 8)]
    found = {b: _perturb.unmeasured_rows(net, images[0], "net.1", 0, b, 256) for b in budgets}
    budget, (rows, _) = next((b, f) for b, f in found.items() if f and 64 <= f[0] < 256)
    assert found[budgets[0]] is None  # the smallest budget: too few rows, measure
    seen: list[int] = []
    net.net[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    passes = []
    for mb in (budgets[-1], budget):  # all 256 rows in one pass; then `rows` at a time
        seen.clear()
        sacam.explain(
            net, images[:1], method="recipro-cam", layer="net.1", strategy="expand",
            max_memory_mb=mb,
        )  # fmt: skip
        passes.append(len(seen))  # the same clean passes, and the front once per pass
    assert found[budgets[-1]] == (256, found[budgets[-1]][1])
    assert passes[1] - passes[0] == math.ceil(256 / rows) - 1


def test_tail_estimate_reads_the_layer_and_what_follows_it_from_the_probe() -> None:
    # small_cnn on 16×16: layer "1" outputs 8×16×16; after it come 16×8×8 (conv, norm,
    # ReLU, dropout), 16 (pool, flatten) and 5 (linear)
    from sacam._layers import probe
    from sacam._speed.memory import tail_estimate

    record = probe(small_cnn().eval(), torch.rand(1, 3, 16, 16))
    assert tail_estimate(record, "1", 0) == (8 * 16 * 16, 16 * 8 * 8)
    assert tail_estimate(record, "6", 0) == (16, 16)  # the pool: flatten (16), linear (5)
    assert tail_estimate(record, "8", 0) == (5, 0)  # the last layer: nothing after it
    assert tail_estimate(record, "1", 1) is None  # a call the probe did not see


def test_expand_cap_gives_the_head_many_more_rows_than_whole_passes(default_model) -> None:
    # at EfficientNet-Lite0's head only pooling and the classifier follow the layer, so
    # a row costs about 5% of a whole pass: far more rows fit the budget; at the first
    # block the network after the layer is nearly all of it, and whole passes set the cap
    from sacam._outputs import logits_model
    from sacam._speed.memory import expand_cap, measured_cap

    model = logits_model(default_model.model)
    x = default_model.preprocess(sacam.images.sample_image("chelsea"))
    whole = measured_cap(model, x, 512.0)
    head = expand_cap(model, x, "_swish", 1, 512.0)
    assert head >= 10 * whole
    assert expand_cap(model, x, "_blocks.0", 0, 512.0) == whole
    assert expand_cap(model, x, "_swish", 7, 512.0) == whole  # no such call: whole passes
