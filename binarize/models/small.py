"""Small models for tests, examples and quick experiments on 28x28 images or flat features.

``SmallCNN`` deliberately writes its ReLUs in the three non-module forms that appear in user
code (``F.relu(x, inplace=True)``, ``torch.relu(x)``, ``x.relu()``), so the converter's
canonicalization is exercised on a real model. ``MLP`` is ``Flatten`` followed by
``Linear -> BatchNorm1d -> ReLU`` layers and a linear head.

Example::

    >>> SmallCNN()(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> MLP(in_features=784)(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "SmallCNN"]


class SmallCNN(nn.Module):
    """``conv-BN-relu (w) -> conv-BN-relu (2w) -> maxpool 2 -> conv-BN-relu (2w) -> global
    average pool -> linear``, all convs 3x3 with padding 1.

    Args:
        num_classes: outputs of ``fc``.
        in_channels: channels of the input image.
        width: channels of the first conv.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.bn3(self.conv3(x)).relu()
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MLP(nn.Sequential):
    """``Flatten -> (Linear -> BatchNorm1d -> ReLU) per hidden width -> Linear``.

    Children are named ``flatten, fc1, bn1, relu1, fc2, ..., head``.

    Args:
        in_features: size of the flattened input (784 for 28x28 images).
        hidden: widths of the hidden layers.
        num_classes: outputs of ``head``.
    """

    def __init__(
        self, in_features: int = 784, hidden: Sequence[int] = (256, 256), num_classes: int = 10
    ) -> None:
        super().__init__()
        self.add_module("flatten", nn.Flatten())
        width = in_features
        for i, out in enumerate(hidden, start=1):
            self.add_module(f"fc{i}", nn.Linear(width, out, bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm1d(out))
            self.add_module(f"relu{i}", nn.ReLU(inplace=True))
            width = out
        self.add_module("head", nn.Linear(width, num_classes))
