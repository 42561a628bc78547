"""MobileNetV3-Small (Howard et al. 2019, "Searching for MobileNetV3", arXiv 1905.02244).

torchvision's layout: a 3x3 stride-2 stem (BN, Hardswish), eleven inverted-residual blocks,
a 1x1 conv to ``6 x`` the last block's channels (BN, Hardswish), global average pooling and
a ``Linear -> Hardswish -> Dropout -> Linear`` classifier. A block is::

    expand 1x1 (BN, act; left out when the expansion equals the input width)
    -> depthwise k x k, stride s (BN, act)
    -> squeeze-excitation with a Hardsigmoid gate (some blocks)
    -> project 1x1 (BN, no activation)
    (+ the block input when s = 1 and the width is unchanged)

with ``act`` ReLU in the first blocks and Hardswish ``x relu6(x + 3) / 6`` in the later ones.

Example::

    >>> model = mobilenet_v3_small(num_classes=10, width_mult=0.25)
    >>> model(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from binarize.models.layers import ConvBNAct, SqueezeExcitation, make_divisible

__all__ = ["InvertedResidualV3", "MobileNetV3", "mobilenet_v3_small"]

# (kernel, expanded, out, squeeze-excitation, Hardswish (else ReLU), stride) at width 1.
_SMALL = (
    (3, 16, 16, True, False, 2),
    (3, 72, 24, False, False, 2),
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),
    (5, 240, 40, True, True, 1),
    (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1),
    (5, 576, 96, True, True, 1),
)


class InvertedResidualV3(nn.Module):
    """One MobileNetV3 block (see the module docstring); ``block`` is the sequence of layers."""

    def __init__(self, in_channels: int, kernel: int, expanded: int, out_channels: int,
                 use_se: bool, hardswish: bool, stride: int) -> None:  # fmt: skip
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, activation=act))
        layers.append(
            ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, activation=act)
        )
        if use_se:
            squeeze = make_divisible(expanded // 4)
            layers.append(SqueezeExcitation(expanded, squeeze, gate=nn.Hardsigmoid))
        layers.append(ConvBNAct(expanded, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = out + x
        return out


class MobileNetV3(nn.Module):
    """MobileNetV3-Small: ``features`` (stem, blocks, last 1x1 conv), ``avgpool``,
    ``classifier``.

    Args:
        num_classes: outputs of the classifier.
        in_channels: channels of the input image.
        width_mult: multiplies every layer's channel count (rounded to multiples of 8).
        dropout: dropout probability before the last linear layer.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2) -> None:  # fmt: skip
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV3 width_mult must be > 0, got {width_mult}")
        channels = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, 2, activation=nn.Hardswish)]
        for kernel, expanded, out, use_se, hardswish, stride in _SMALL:
            out = make_divisible(out * width_mult)
            expanded = make_divisible(expanded * width_mult)
            layers.append(
                InvertedResidualV3(channels, kernel, expanded, out, use_se, hardswish, stride)
            )
            channels = out
        last_conv = 6 * channels
        layers.append(ConvBNAct(channels, last_conv, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = make_divisible(1024 * width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v3_small(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0
) -> MobileNetV3:
    """MobileNetV3-Small (2,542,856 parameters at width 1.0 and 1000 classes, as torchvision)."""
    return MobileNetV3(num_classes, in_channels, width_mult)
