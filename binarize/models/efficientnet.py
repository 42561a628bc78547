"""EfficientNet-B0 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", arXiv 1905.11946).

torchvision's layout: a 3x3 stride-2 stem (BN, SiLU), seven stages of MBConv blocks, a 1x1
conv to ``4 x`` the last stage's channels (BN, SiLU), global average pooling, dropout and a
linear classifier. An MBConv block (Sandler et al. 2018's inverted residual with Hu et al.'s
squeeze-excitation) is::

    expand 1x1 to t x C_in (BN, SiLU; left out when t = 1)
    -> depthwise k x k, stride s (BN, SiLU)
    -> squeeze-excitation: C_in / 4 squeeze channels, SiLU, Sigmoid gate
    -> project 1x1 (BN, no activation)
    (+ the block input when s = 1 and C_out = C_in)

SiLU is ``x sigmoid(x)``. torchvision drops whole residual branches at random during training
(stochastic depth); that is a training regulariser, equal to the identity at inference, and is
left out here. ``width_mult`` / ``depth_mult`` scale channels (rounded to multiples of 8) and
blocks per stage (``ceil(layers x depth_mult)``) as the paper's compound scaling does.

Example::

    >>> model = efficientnet_b0(num_classes=10, width_mult=0.25, depth_mult=0.25)
    >>> model(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from binarize.models.layers import ConvBNAct, SqueezeExcitation, make_divisible

__all__ = ["EfficientNet", "MBConv", "efficientnet_b0"]

# (expand ratio, kernel, stride, in, out, layers) of the B0 stages at width and depth 1.
_B0 = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class MBConv(nn.Module):
    """One mobile inverted bottleneck with squeeze-excitation (see the module docstring)."""

    def __init__(
        self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int, stride: int
    ) -> None:
        super().__init__()
        expanded = make_divisible(in_channels * expand_ratio)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, activation=nn.SiLU))
        layers.append(
            ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, activation=nn.SiLU)
        )
        squeeze = max(1, in_channels // 4)
        layers.append(SqueezeExcitation(expanded, squeeze, activation=nn.SiLU, gate=nn.Sigmoid))
        layers.append(ConvBNAct(expanded, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = out + x
        return out


class EfficientNet(nn.Module):
    """EfficientNet-B0 with compound scaling: ``features`` (stem, stages, last 1x1 conv),
    ``avgpool``, ``classifier``.

    Args:
        num_classes: outputs of the classifier.
        in_channels: channels of the input image.
        width_mult: multiplies every layer's channel count (rounded to multiples of 8).
        depth_mult: multiplies the blocks per stage (rounded up).
        dropout: dropout probability before the classifier.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 depth_mult: float = 1.0, dropout: float = 0.2) -> None:  # fmt: skip
        super().__init__()
        if width_mult <= 0 or depth_mult <= 0:
            raise ValueError(
                f"EfficientNet width_mult and depth_mult must be > 0, got {width_mult}, "
                f"{depth_mult}"
            )
        channels = make_divisible(32 * width_mult)
        stages: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, 2, activation=nn.SiLU)]
        for expand, kernel, stride, _, out, layers in _B0:
            out = make_divisible(out * width_mult)
            blocks = []
            for index in range(math.ceil(layers * depth_mult)):
                blocks.append(MBConv(channels, out, expand, kernel, stride if index == 0 else 1))
                channels = out
            stages.append(nn.Sequential(*blocks))
        last_conv = 4 * channels
        stages.append(ConvBNAct(channels, last_conv, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_conv, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def efficientnet_b0(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                    depth_mult: float = 1.0) -> EfficientNet:  # fmt: skip
    """EfficientNet-B0 (5,288,548 parameters at width and depth 1.0 and 1000 classes, as
    torchvision)."""
    return EfficientNet(num_classes, in_channels, width_mult, depth_mult)
