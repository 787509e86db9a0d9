"""Small networks that several test files build the same way (the session setup is ../conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from droplab import data, models


@pytest.fixture
def small_mlp() -> Callable[..., nn.Sequential]:
    """Makes ``Linear(8, 16) [BN] ReLU Dropout(0.5) Linear(16, 3)``, the same weights every call."""
    def make(batch_norm: bool = False) -> nn.Sequential:
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Linear(8, 16)]
        layers += [nn.BatchNorm1d(16)] if batch_norm else []
        layers += [nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)]
        return nn.Sequential(*layers)
    return make


@pytest.fixture
def trained_like() -> Callable[..., nn.Module]:
    """Makes a small PreResNet with non-trivial BN statistics (one train-mode pass), in eval mode."""
    def make(head_conv: bool = True) -> nn.Module:
        torch.manual_seed(0)
        model = models.PreResNet(8, in_channels=1, width=4, head_conv=head_conv)
        model.train()
        with torch.no_grad():
            model(torch.randn(64, 1, 28, 28))
        return model.eval()
    return make


@pytest.fixture(scope="session")
def synthetic():
    """A learnable synthetic split: 1,024 training and 256 test images of 10 classes (data.synthetic)."""
    return data.synthetic("train", n=1024), data.synthetic("test", n=256)


@pytest.fixture(scope="session")
def small_resnet() -> Callable[..., nn.Module]:
    """Makes a PreResNet-8 for one-channel images, width 4 unless told, the same weights every call."""
    def make(width: int = 4, **kw) -> nn.Module:
        torch.manual_seed(0)
        return models.PreResNet(8, in_channels=1, width=width, **kw)
    return make
