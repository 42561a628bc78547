"""SqueezeNet 1.1 (Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer
parameters and <0.5MB model size", arXiv 1602.07360; version 1.1 from the authors' repository).

torchvision's layout and module names: ``features`` (3x3 stride-2 conv, ReLU, then fire
modules between three 3x3 stride-2 max-pools with ``ceil_mode=True``) and ``classifier``
(dropout, a 1x1 conv to ``num_classes``, ReLU, global average pooling), then a flatten. A fire
module squeezes the channels with a 1x1 conv (ReLU) and expands them again with a 1x1 and a
3x3 conv side by side (ReLU each), concatenated along the channels::

    fire(x) = cat(relu(expand1x1(s)), relu(expand3x3(s))),  s = relu(squeeze(x))

Example::

    >>> model = squeezenet(num_classes=10, width_mult=0.25)
    >>> model(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from binarize.models.layers import make_divisible

__all__ = ["Fire", "SqueezeNet", "squeezenet"]

# Fire modules of SqueezeNet 1.1 (squeeze, expand each), "M" a 3x3 stride-2 max-pool.
_V11 = ("M", (16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192),
        (64, 256), (64, 256))  # fmt: skip


class Fire(nn.Module):
    """``cat(relu(expand1x1(s)), relu(expand3x3(s)))`` with ``s = relu(squeeze(x))``."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 with torchvision's module names (``features``, ``classifier``).

    Args:
        num_classes: output channels of the final 1x1 conv.
        in_channels: channels of the input image.
        width_mult: multiplies every layer's channel count (rounded to multiples of 4).
        dropout: dropout probability before the final conv.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.5) -> None:  # fmt: skip
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"SqueezeNet width_mult must be > 0, got {width_mult}")
        channels = make_divisible(64 * width_mult, 4)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
        ]
        for entry in _V11:
            if entry == "M":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
                continue
            squeeze, expand = (make_divisible(c * width_mult, 4) for c in entry)
            layers.append(Fire(channels, squeeze, expand, expand))
            channels = 2 * expand
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0
) -> SqueezeNet:
    """SqueezeNet 1.1 (1,235,496 parameters at width 1.0 and 1000 classes, as torchvision's
    squeezenet1_1)."""
    return SqueezeNet(num_classes, in_channels, width_mult)
