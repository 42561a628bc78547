"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition", arXiv 1512.03385).

Module names, state_dict keys and parameter counts are those of torchvision's ResNet, so a
torchvision checkpoint loads with ``load_state_dict`` and graphs trace to the same node
names: ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``; each block has
``conv1, bn1, conv2, bn2`` (``conv3, bn3`` in Bottleneck), one ``relu`` module called twice,
and ``downsample = Sequential(conv1x1, BatchNorm2d)`` when the shape changes. The shared
ReLU and the in-place residual add are kept on purpose: they are what the converter meets in
real torchvision models.

``resnet_small`` is the same code with a 3x3 stride-1 stem, no max-pool and three stages, for
28x28 (Fashion-MNIST) or 32x32 (CIFAR) inputs.

Example::

    >>> model = resnet18(num_classes=10)
    >>> model(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet_small"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet with torchvision's module names.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage; stage ``i`` is ``layer{i+1}``, the first stage has stride 1
            and every later one stride 2.
        num_classes: outputs of ``fc``.
        in_channels: channels of the input image.
        widths: base width of each stage (multiplied by ``block.expansion``).
        small_stem: ``True``: 3x3 stride-1 ``conv1`` and no max-pool (``maxpool`` is an
            ``nn.Identity``) for 28-32 pixel inputs; ``False``: torchvision's 7x7 stride-2 stem
            and 3x3 stride-2 max-pool.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        small_stem: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(
                f"ResNet needs one width per stage: layers={list(layers)}, widths={list(widths)}"
            )
        self.inplanes = widths[0]
        if small_stem:
            self.conv1 = conv3x3(in_channels, self.inplanes)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.stage_names = [f"layer{i + 1}" for i in range(len(layers))]
        for i, (name, blocks, width) in enumerate(zip(self.stage_names, layers, widths)):
            self.add_module(name, self._make_layer(block, width, blocks, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        self._init_weights()

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18: BasicBlock, [2, 2, 2, 2] (11,689,512 parameters at 1000 classes)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-34: BasicBlock, [3, 4, 6, 3] (21,797,672 parameters at 1000 classes)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50: Bottleneck, [3, 4, 6, 3] (25,557,032 parameters at 1000 classes)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


def resnet_small(
    num_classes: int = 10, in_channels: int = 1, width: int = 32, blocks: int = 1
) -> ResNet:
    """Small ResNet for 28x28 / 32x32 inputs: 3x3 stride-1 stem, three BasicBlock stages of
    ``width, 2 width, 4 width`` channels (strides 1, 2, 2), ``blocks`` blocks each.

    At the defaults (Fashion-MNIST, width 32, one block per stage): 308,074 parameters.
    """
    return ResNet(
        BasicBlock,
        [blocks] * 3,
        num_classes,
        in_channels,
        widths=(width, 2 * width, 4 * width),
        small_stem=True,
    )
