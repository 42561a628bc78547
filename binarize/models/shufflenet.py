"""ShuffleNetV2 (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", arXiv 1807.11164).

torchvision's layout and spelling: ``conv1`` (3x3 stride 2, BN, ReLU), a 3x3 stride-2
max-pool, three stages (``stage2..4``) of shuffle units, ``conv5`` (1x1, BN, ReLU), the mean
over H and W and a linear ``fc``. A unit of stride 1 splits the channels in two halves with
``x.chunk(2, dim=1)``, keeps the first and transforms the second (``branch2``: 1x1 conv, BN,
ReLU, depthwise 3x3, BN, 1x1 conv, BN, ReLU), concatenates them; a unit of stride 2 (each
stage's first) feeds the whole input to both ``branch1`` (depthwise 3x3 stride 2, BN, 1x1
conv, BN, ReLU) and ``branch2``. Then the channel shuffle with ``g = 2`` groups: channel
``i * (C / g) + j`` moves to ``j * g + i``, written as torchvision writes it::

    x.view(n, g, c // g, h, w) -> torch.transpose(x, 1, 2).contiguous() -> x.view(n, -1, h, w)

Example::

    >>> model = shufflenet_v2(num_classes=10, width_mult=0.25, repeats=(2, 2, 2))
    >>> model(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ShuffleNetV2", "ShuffleUnit", "channel_shuffle", "shufflenet_v2"]

#: torchvision's shufflenet_v2_x1_0 widths: conv1, stage2, stage3, stage4, conv5.
_WIDTHS = (24, 116, 232, 464, 1024)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave ``groups`` channel groups (torchvision's ``channel_shuffle``)."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class ShuffleUnit(nn.Module):
    """One ShuffleNetV2 unit (torchvision's ``InvertedResidual``; see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 ShuffleUnit keeps its width, got {in_channels} -> {out_channels}"
            )
        self.stride = stride
        branch = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(in_channels, stride),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            _depthwise(branch, stride),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 with torchvision's module names (``conv1, maxpool, stage2..4, conv5, fc``).

    Args:
        num_classes: outputs of ``fc``.
        in_channels: channels of the input image.
        width_mult: multiplies every width of torchvision's x1.0 model (24, 116, 232, 464,
            1024), rounded to a multiple of 4 so each half of a split is even.
        repeats: units per stage (the first of each has stride 2).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 repeats: Sequence[int] = (4, 8, 4)) -> None:  # fmt: skip
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"ShuffleNetV2 width_mult must be > 0, got {width_mult}")
        if len(repeats) != 3 or min(repeats) < 1:
            raise ValueError(f"ShuffleNetV2 needs 3 stages of >= 1 unit, got repeats={repeats}")
        widths = [max(4, round(w * width_mult / 4) * 4) for w in _WIDTHS]
        channels = widths[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for index, (units, out) in enumerate(zip(repeats, widths[1:4]), start=2):
            stage = [ShuffleUnit(channels, out, 2)]
            stage += [ShuffleUnit(out, out, 1) for _ in range(units - 1)]
            setattr(self, f"stage{index}", nn.Sequential(*stage))
            channels = out
        self.conv5 = nn.Sequential(
            nn.Conv2d(channels, widths[4], 1, bias=False),
            nn.BatchNorm2d(widths[4]),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(widths[4], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean([2, 3])
        return self.fc(x)


def shufflenet_v2(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                  repeats: Sequence[int] = (4, 8, 4)) -> ShuffleNetV2:  # fmt: skip
    """ShuffleNetV2 (2,278,604 parameters at width 1.0 and 1000 classes, as torchvision's
    shufflenet_v2_x1_0)."""
    return ShuffleNetV2(num_classes, in_channels, width_mult, repeats)
