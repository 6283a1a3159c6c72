"""Sigmoid outputs: multi-label classifiers, one-logit binary models, nn.Sigmoid at the end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam.evaluation.curves import curve
from sacam.labels import explain_labels

SIZE, SIDE = 32, 8  # 32×32 images, 8×8 squares: a square covers 1/16 of the image
COLOURS = 3  # one label per colour: red, green, blue


def squares(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` dark noisy images with up to 3 squares, one per colour, at random places.

    Returns the images, the labels ``(n, 3)`` (multi-hot) and the square boxes
    ``(n, 3, 2)`` (top-left corners; -1 where absent). Squares do not overlap.
    """
    x = torch.rand(n, 3, SIZE, SIZE, generator=gen) * 0.2
    labels = torch.zeros(n, COLOURS)
    corners = torch.full((n, COLOURS, 2), -1, dtype=torch.long)
    cells = [(r, c) for r in range(0, SIZE, SIDE) for c in range(0, SIZE, SIDE)]
    for i in range(n):
        present = torch.rand(COLOURS, generator=gen) < 0.5
        places = torch.randperm(len(cells), generator=gen)[:COLOURS]
        for colour in range(COLOURS):
            if present[colour]:
                r, c = cells[int(places[colour])]
                x[i, :, r : r + SIDE, c : c + SIDE] = 0.0
                x[i, colour, r : r + SIDE, c : c + SIDE] = 1.0
                labels[i, colour] = 1.0
                corners[i, colour] = torch.tensor([r, c])
    return x, labels, corners


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A tiny multi-label CNN (global average pooling), trained on the squares, seeded."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, COLOURS),
    )
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(200):
        x, y, _ = squares(16, gen)
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    return net.eval()


def test_the_multilabel_net_learnt_the_colours(trained: nn.Module) -> None:
    x, y, _ = squares(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = torch.sigmoid(trained(x)) > 0.5
    assert float((predicted == y.bool()).float().mean()) > 0.95


def pointing_game(maps: list[dict[int, torch.Tensor]], corners: torch.Tensor) -> float:
    """Share of (image, present label) maps whose maximum lies on that label's square."""
    hits = total = 0
    for i, per_label in enumerate(maps):
        for label, m in per_label.items():
            r, c = corners[i, label].tolist()
            if r < 0:
                continue  # a label predicted but absent: not a pointing-game trial
            peak = int(m.argmax())
            pr, pc = divmod(peak, m.shape[1])
            hits += int(r <= pr < r + SIDE and c <= pc < c + SIDE)
            total += 1
    assert total >= 20
    return hits / total


@pytest.mark.parametrize("method", ["grad-cam", "sa-cam", "recipro-cam"])
def test_each_labels_map_lands_on_its_square(trained: nn.Module, method: str) -> None:
    x, y, corners = squares(16, torch.Generator().manual_seed(2))
    maps = explain_labels(trained, x, method, threshold=0.5)
    # every present label (and nothing else, for this well-trained net) is explained
    assert [sorted(m) for m in maps] == [torch.nonzero(row).flatten().tolist() for row in y]
    # random points land on a square 1/16 of the time
    assert pointing_game(maps, corners) >= 0.9


def test_top_k_labels_come_most_probable_first(trained: nn.Module) -> None:
    x, _, _ = squares(4, torch.Generator().manual_seed(3))
    maps = explain_labels(trained, x, "grad-cam", threshold=None, top=2)
    probs = torch.sigmoid(trained(x)).detach()
    for row, per_label in zip(probs, maps, strict=True):
        assert list(per_label) == row.argsort(descending=True)[:2].tolist()


def test_sigmoid_probabilities_are_reported(trained: nn.Module) -> None:
    x, _, _ = squares(4, torch.Generator().manual_seed(4))
    out = sacam.explain_full(trained, x, method="grad-cam", activation="sigmoid", targets=1)
    logits = trained(x).detach()
    torch.testing.assert_close(out.probabilities, torch.sigmoid(logits[:, 1]))


class OneLogit(nn.Module):
    """A binary classifier: the red label of the multi-label net, one logit."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, :1]


def test_a_one_logit_model_is_read_as_sigmoid(trained: nn.Module) -> None:
    binary = OneLogit(trained)
    x, y, corners = squares(16, torch.Generator().manual_seed(5))
    x = x[y[:, 0] == 1][:4]  # images with a red square
    out = sacam.explain_full(binary, x, method="recipro-cam")
    logit = binary(x).detach()[:, 0]
    torch.testing.assert_close(out.probabilities, torch.sigmoid(logit))
    assert (out.maps.flatten(1).amax(1) > 0).all()  # softmax of one logit would be 1: all 0


def test_a_model_ending_in_sigmoid_reports_its_output(trained: nn.Module) -> None:
    probs_net = nn.Sequential(trained, nn.Sigmoid())
    x, _, _ = squares(4, torch.Generator().manual_seed(6))
    out = sacam.explain_full(probs_net, x, method="grad-cam", targets=2)
    torch.testing.assert_close(out.probabilities, probs_net(x).detach()[:, 2])


def test_deletion_curves_score_the_sigmoid_probability(trained: nn.Module) -> None:
    binary = OneLogit(trained)
    x, y, _ = squares(8, torch.Generator().manual_seed(7))
    x = x[y[:, 0] == 1][:2]
    maps = sacam.explain(binary, x, method="grad-cam")
    zeros, classes = torch.zeros_like(x), torch.zeros(len(x), dtype=torch.long)
    result = curve(binary, x, zeros, maps, classes, step=SIZE * SIZE // 4, inputs_per_pass=4)
    start = torch.sigmoid(binary(x).detach()[:, 0])
    torch.testing.assert_close(result.curves[:, 0], start, atol=1e-5, rtol=0)  # softmax: 1.0
    end = torch.sigmoid(binary(zeros).detach()[:, 0])
    torch.testing.assert_close(result.curves[:, -1], end, atol=1e-5, rtol=0)


def test_a_bad_activation_is_refused(trained: nn.Module) -> None:
    with pytest.raises(sacam.errors.TargetError, match="activation must be"):
        sacam.explain(trained, torch.rand(1, 3, 32, 32), activation="relu")
