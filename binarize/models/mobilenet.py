"""MobileNetV1 (Howard et al. 2017, "MobileNets", arXiv 1704.04861).

A 3x3 stride-2 stem, then 13 depthwise-separable blocks (depthwise 3x3 conv -> BN -> ReLU6,
pointwise 1x1 conv -> BN -> ReLU6), global average pooling and a linear classifier.
ReActNet-A (Liu et al. 2020) and DyBNN's MobileNet variant (Zhang et al. 2021) are built on
this layout.

Example::

    >>> model = mobilenet_v1(num_classes=10, width_mult=0.25)
    >>> model(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DepthwiseSeparable", "MobileNetV1", "mobilenet_v1"]

# (output channels, stride) of each depthwise-separable block at width_mult = 1.
_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _scaled(channels: int, width_mult: float, divisor: int = 8) -> int:
    """``channels * width_mult`` rounded to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)


class DepthwiseSeparable(nn.Module):
    """``relu6(bn2(pointwise(relu6(bn1(depthwise(x))))))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU6(inplace=True)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.depthwise(x)))
        return self.relu2(self.bn2(self.pointwise(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1: ``stem`` (conv 3x3 stride 2, BN, ReLU6), ``features`` (13 blocks),
    ``avgpool``, ``classifier``.

    Args:
        num_classes: outputs of the classifier.
        in_channels: channels of the input image.
        width_mult: multiplies every layer's channel count (rounded to multiples of 8).
    """

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV1 width_mult must be > 0, got {width_mult}")
        channels = _scaled(32, width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU6(inplace=True),
        )
        blocks = []
        for out, stride in _BLOCKS:
            out = _scaled(out, width_mult)
            blocks.append(DepthwiseSeparable(channels, out, stride))
            channels = out
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(self.stem(x)))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v1(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0
) -> MobileNetV1:
    """MobileNetV1 (4.23 M parameters at width 1.0 and 1000 classes)."""
    return MobileNetV1(num_classes, in_channels, width_mult)
