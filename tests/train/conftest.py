"""Fixtures of the training tests."""

from __future__ import annotations

import pytest
import torch

from binarize.data import synthetic_images


@pytest.fixture
def toy_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train, val) pairs of a 4-class 1x8x8 problem."""
    x, y = synthetic_images(320, size=8, classes=4, noise=0.8, seed=1)
    return (x[:256], y[:256]), (x[256:], y[256:])
