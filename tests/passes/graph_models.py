"""Small models and helpers shared by the pass tests (tiny shapes, so every test stays fast)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from binarize.models import resnet
from passes.base import module_of, run_passes
from passes.canonicalize import Canonicalize
from passes.trace import trace


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def basic_block(cin: int, cout: int, stride: int = 1) -> resnet.BasicBlock:
    """The model zoo's torchvision BasicBlock (one ``self.relu`` called twice,
    ``out += identity``), with a projection shortcut when the shape changes."""
    downsample = _projection(cin, cout, stride) if stride != 1 or cin != cout else None
    return resnet.BasicBlock(cin, cout, stride, downsample)


def bottleneck(cin: int, width: int, stride: int = 1) -> resnet.Bottleneck:
    """The model zoo's torchvision Bottleneck (1x1 -> 3x3 -> 1x1 expanding to 4*width), with a
    projection shortcut."""
    return resnet.Bottleneck(cin, width, stride, _projection(cin, 4 * width, stride))


class TinyResNet(nn.Module):
    """Stem conv -> two BasicBlocks (the second downsamples 8 -> 16) -> GAP -> fc."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = basic_block(8, 8)
        self.layer2 = basic_block(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class DepthwiseNet(nn.Module):
    """MobileNet-style: float stem, depthwise 3x3 + pointwise 1x1 with ReLU6, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.dw2 = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn0(self.stem(x)), inplace=True)
        x = F.relu6(self.bn1(self.dw(x)))
        x = F.relu6(self.bn2(self.pw(x)))
        x = F.relu6(self.bn3(self.dw2(x)))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    """Three linear layers with ReLUs: the middle one is the only binary candidate."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(F.relu(self.fc1(x)))))


def canonical(model: nn.Module, *inputs: torch.Tensor) -> fx.GraphModule:
    """``model`` traced and canonicalized (shapes recorded for ``inputs``)."""
    return run_passes(trace(model), [Canonicalize(tuple(inputs))])


def module_counts(gm: fx.GraphModule) -> Counter[str]:
    """How many call sites each module type name has in ``gm``'s graph."""
    return Counter(
        type(module_of(gm, node)).__name__ for node in gm.graph.nodes if node.op == "call_module"
    )


def op_counts(gm: fx.GraphModule) -> Counter[Any]:
    """How many nodes each (op, target) pair has, for function and method calls."""
    return Counter(
        (node.op, node.target)
        for node in gm.graph.nodes
        if node.op in ("call_function", "call_method")
    )
