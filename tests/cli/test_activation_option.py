"""``sacam explain --activation``: the probability printed is the model's own kind."""

from __future__ import annotations

import pytest
import torch

from sacam.cli import main

MODULE = """
import torch
from torch import nn

def build():
    # logits (0, 1, 2) for every image, up to 1e-6: the head's weights are tiny
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[4].weight.mul_(1e-7)
        net[4].bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    return net
"""


def test_activation_sigmoid_reports_sigmoid_probabilities(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "multilabel_a9.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {}
    exec(MODULE, namespace)
    net = namespace["build"]()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    args = ["explain", "sample:chelsea", "--model", "multilabel_a9:build", "--weights", "w.pth"]
    args += ["--size", "32", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
    args += ["--method", "grad-cam", "--target", "2"]
    outputs = {}
    for kind in ("softmax", "sigmoid"):
        assert main([*args, "--activation", kind, "--out", kind]) == 0
        outputs[kind] = capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main([*args, "--activation", "relu", "--out", "bad"])
    assert bad.value.code == 2 and "invalid choice" in capsys.readouterr().err
    # the probabilities printed are the softmax and the sigmoid of the logits (0, 1, 2)
    logits = torch.tensor([0.0, 1.0, 2.0])
    for kind, probs in (("softmax", logits.softmax(0)), ("sigmoid", logits.sigmoid())):
        assert f"class 2 ({float(probs[2]):.3f})" in outputs[kind]
        assert f"class 2 (2) {float(probs[2]):.2f}" in outputs[kind]
