"""Concurrency, autograd context and model state: what a web server or a notebook does.

Expectations are independent of the code under test: sequential calls made before any
thread starts, the model's own flags and buffers copied before the calls, and the maps of
an ordinary (grad-enabled) call for the inference-mode cases.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import sacam
from sacam import list_methods
from tests.support.nets import small_cnn


def deeper_cnn(seed: int = 0) -> nn.Sequential:
    """Big enough that a call takes milliseconds, so threads really interleave."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    return nn.Sequential(*layers)


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] == 0
    for k, v in before["state"].items():  # type: ignore[union-attr]
        assert torch.equal(after["state"][k], v), k  # type: ignore[index]


def run_threads(n: int, work: list[list[object]], fn) -> tuple[dict, list[BaseException]]:  # noqa: ANN001
    """Run fn(item) for every item of work[i] in thread i; collect results and errors."""
    results: dict = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def worker(items: list[object]) -> None:
        start.wait()
        for item in items:
            try:
                results[item] = fn(item)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(work[i],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    return results, errors


@pytest.mark.parametrize("method", ["grad-cam", "sa-cam", "score-cam", "eigen-cam"])
def test_concurrent_calls_on_one_model_equal_sequential_calls(method: str) -> None:
    model = deeper_cnn().train()  # a training-mode model: every call must flip it and back
    g = torch.Generator().manual_seed(0)
    inputs = [torch.rand(2, 3, 24, 24, generator=g) for _ in range(12)]
    options = {"inputs_per_pass": 64} if method == "score-cam" else {}
    before = snapshot(model)
    expected = [sacam.explain(model, x, method, **options) for x in inputs]
    assert_same_state(before, snapshot(model))

    def call(i: object) -> torch.Tensor:
        return sacam.explain(model, inputs[int(i)], method, **options)  # type: ignore[call-overload]

    work = [list(range(k, len(inputs), 3)) for k in range(3)]
    results, errors = run_threads(3, work, call)
    assert errors == []
    for i, want in enumerate(expected):
        torch.testing.assert_close(results[i], want, rtol=0, atol=1e-6)
    assert_same_state(before, snapshot(model))


def test_different_models_run_in_parallel() -> None:
    models = [deeper_cnn(seed) for seed in range(3)]
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    expected = [sacam.explain(m, x, "grad-cam") for m in models]
    results, errors = run_threads(
        3,
        [[i, i + 3] for i in range(3)],
        lambda i: sacam.explain(models[int(i) % 3], x, "grad-cam"),  # type: ignore[call-overload]
    )
    assert errors == []
    for i in range(6):
        torch.testing.assert_close(results[i], expected[i % 3], rtol=0, atol=1e-6)


def test_a_plain_forward_in_another_thread_is_not_captured() -> None:
    """User code running the model without sacam, during a call, must not feed its hooks."""
    model = deeper_cnn().eval()
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    other = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    expected = sacam.explain(model, x, "grad-cam", targets=2)
    foreign: list[torch.Tensor] = []

    def score_with_a_foreign_forward(output: torch.Tensor) -> torch.Tensor:
        # runs inside the call, after sacam's forward pass and before its backward pass
        t = threading.Thread(target=lambda: foreign.append(model(other).detach()))
        t.start()
        t.join(timeout=60)
        return output[:, 2]

    for method in ("grad-cam", "eigen-cam"):
        want = expected if method == "grad-cam" else sacam.explain(model, x, method, targets=2)
        got = sacam.explain(model, x, method, targets=[score_with_a_foreign_forward])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert len(foreign) == 2 and foreign[0].shape == (4, 10)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", ["grad-cam", "grad-cam++", "sa-cam", "score-cam"])
def test_explain_inside_inference_mode(method: str) -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    expected = sacam.explain(model, x, method)
    with torch.inference_mode():
        x_inf = x.clone()  # an inference tensor, as a user's preprocessing would make it
        got = sacam.explain(model, x_inf, method)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(sacam.explain(model, x, method), expected, rtol=0, atol=1e-6)
    assert torch.is_grad_enabled()
    assert all(p.requires_grad for p in model.parameters())


def test_eval_mode_false_leaves_batch_norm_statistics_untouched() -> None:
    model = small_cnn().train()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 3 + 1
    before = snapshot(model)
    for method in ("grad-cam", "score-cam", "sa-cam"):
        sacam.explain(model, x, method, eval_mode=False)
    assert_same_state(before, snapshot(model))
    # and the call did run in training mode: batch statistics, so the maps differ from eval
    diff = (sacam.explain(model, x, "grad-cam", eval_mode=False) - sacam.explain(model, x)).abs()
    assert float(diff.max()) > 1e-3


def test_every_method_leaves_a_training_model_exactly_as_it_was() -> None:
    model = small_cnn().train()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    before = snapshot(model)
    for method in list_methods():
        if sacam.method_info(method).family == "transformer":  # ViTs: tests/test_legrad.py
            continue
        sacam.explain(model, x, method, eval_mode=False)
        sacam.explain(model, x, method)
    assert_same_state(before, snapshot(model))
