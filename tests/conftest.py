"""Shared fixtures: a tiny seeded CNN, images for it, and the default model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.support.nets import small_cnn


@pytest.fixture
def cnn() -> nn.Sequential:
    return small_cnn()


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 16, 16, generator=g)


@pytest.fixture(scope="session")
def default_model():  # noqa: ANN201
    from sacam.models import load_model

    return load_model()
