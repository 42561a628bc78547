"""Stacked HourGlass for heatmap regression (Newell et al. 2016, arXiv 1603.06937), small.

The network Bulat et al. 2019 binarize for human pose estimation: a stem that brings the
image to 1/4 resolution, then ``num_stacks`` hourglasses in sequence. Each hourglass of depth
``d`` is recursive::

    hourglass_d(x) = up1(x) + upsample2(low3(inner(low1(maxpool2(x)))))
    inner = hourglass_{d-1}  (a residual block at d = 1)

Every stack ends in a 1x1 head producing ``num_joints`` heatmaps (intermediate supervision);
between stacks the features and the heatmaps are mapped back to ``width`` channels by 1x1
convs and added to the stack's input. Two residual blocks (``block=``):

- ``"basic"``: two 3x3 conv-BN layers with a shortcut (1x1 conv + BN when the width changes)
  and a ReLU after the add;
- ``"hierarchical"``: the hierarchical, parallel and multi-scale block Bulat and
  Tzimiropoulos 2017 (arXiv 1703.00862) designed for binary hourglasses and Bulat et al.
  2019 train: three 3x3 convs in sequence, each after BN and ReLU, with C/2, C/4 and C/4
  output channels, concatenated back to C and added to the input:
  ``out = cat(c1, c2, c3) + x``, ``c1 = conv(relu(bn(x)))``, ``c2 = conv(relu(bn(c1)))``,
  ``c3 = conv(relu(bn(c2)))``. Binarized, every conv sees a larger receptive field at the
  cost of one conv of C^2 / 2 + C^2 / 8 + C^2 / 16 weights instead of two of C^2.

``outputs=`` picks the output: ``"concat"``, one tensor ``[N, num_stacks * num_joints, H/4,
W/4]`` whose channels ``s*J .. (s+1)*J - 1`` are the heatmaps of stack ``s`` (an MSE loss
against the target repeated ``num_stacks`` times supervises every stack;
:meth:`HourGlassNet.split_stacks` views it as ``[N, S, J, H, W]``), or ``"list"``, a list of
``num_stacks`` tensors ``[N, J, H/4, W/4]`` (the usual way of writing it). Both trace with
torch.fx and pack; the last stack is the prediction.

Example::

    >>> model = hourglass(num_stacks=2, num_joints=8, depth=3, width=32)
    >>> model(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 16, 16, 16])
    >>> model = hourglass(2, 8, 3, 32, block="hierarchical", outputs="list")
    >>> [heatmaps.shape for heatmaps in model(torch.randn(1, 3, 64, 64))]
    [torch.Size([1, 8, 16, 16]), torch.Size([1, 8, 16, 16])]
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HierarchicalBlock", "HourGlass", "HourGlassNet", "Residual", "hourglass"]

BLOCKS = ("basic", "hierarchical")
OUTPUTS = ("concat", "list")


class Residual(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class HierarchicalBlock(nn.Module):
    """``cat(c1, c2, c3) + x`` with ``c_k = conv3x3(relu(bn(c_{k-1})))``, ``c_0 = x``, of
    ``C/2, C/4, C/4`` channels (Bulat and Tzimiropoulos 2017); ``C`` must be divisible by 4."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"HierarchicalBlock needs channels divisible by 4, got {channels}")
        widths = [channels, channels // 2, channels // 4, channels // 4]
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in widths[:3])
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(3))
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            for c_in, c_out in itertools.pairwise(widths)
        )

    def forward(self, x: Tensor) -> Tensor:
        branches = []
        out = x
        for bn, relu, conv in zip(self.bns, self.relus, self.convs):
            out = conv(relu(bn(out)))
            branches.append(out)
        return torch.cat(branches, dim=1) + x


def _block(kind: str, width: int) -> nn.Module:
    return Residual(width, width) if kind == "basic" else HierarchicalBlock(width)


class HourGlass(nn.Module):
    """One hourglass of ``depth`` levels (each halves, then restores, the resolution)."""

    def __init__(self, depth: int, width: int, block: str = "basic") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"HourGlass depth must be >= 1, got {depth}")
        self.up1 = _block(block, width)
        self.low1 = _block(block, width)
        self.inner: nn.Module = (
            HourGlass(depth - 1, width, block) if depth > 1 else _block(block, width)
        )
        self.low3 = _block(block, width)

    def forward(self, x: Tensor) -> Tensor:
        low = self.low3(self.inner(self.low1(F.max_pool2d(x, 2))))
        return self.up1(x) + F.interpolate(low, scale_factor=2, mode="nearest")


class HourGlassNet(nn.Module):
    """Stacked hourglasses with intermediate supervision; see the module docstring.

    Args:
        num_stacks: hourglasses in sequence (Bulat 2019: 2 stacks +1.5 PCKh, 3 stacks +1.9).
        num_joints: heatmaps per stack.
        depth: levels of each hourglass; the input side must be divisible by ``4 * 2**depth``.
        width: channels inside the hourglasses.
        in_channels: channels of the input image.
        block: ``"basic"`` or ``"hierarchical"`` residual blocks (module docstring).
        outputs: ``"concat"`` (one tensor) or ``"list"`` (one tensor per stack).
    """

    def __init__(
        self,
        num_stacks: int = 2,
        num_joints: int = 8,
        depth: int = 3,
        width: int = 64,
        in_channels: int = 3,
        block: str = "basic",
        outputs: str = "concat",
    ) -> None:
        super().__init__()
        if num_stacks < 1:
            raise ValueError(f"HourGlassNet needs num_stacks >= 1, got {num_stacks}")
        if block not in BLOCKS or outputs not in OUTPUTS:
            raise ValueError(
                f"HourGlassNet block must be one of {BLOCKS} and outputs one of {OUTPUTS}, got "
                f"block={block!r}, outputs={outputs!r}"
            )
        self.num_stacks = num_stacks
        self.num_joints = num_joints
        self.outputs = outputs
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            _block(block, width),
            nn.MaxPool2d(2),
            _block(block, width),
        )
        self.hourglasses = nn.ModuleList(
            HourGlass(depth, width, block) for _ in range(num_stacks)
        )
        self.features = nn.ModuleList(
            nn.Sequential(
                _block(block, width),
                nn.Conv2d(width, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            for _ in range(num_stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(width, num_joints, 1) for _ in range(num_stacks))
        self.merge_features = nn.ModuleList(
            nn.Conv2d(width, width, 1) for _ in range(num_stacks - 1)
        )
        self.merge_heatmaps = nn.ModuleList(
            nn.Conv2d(num_joints, width, 1) for _ in range(num_stacks - 1)
        )

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x = self.stem(x)
        heatmaps = []
        for s in range(self.num_stacks):
            features = self.features[s](self.hourglasses[s](x))
            heatmap = self.heads[s](features)
            heatmaps.append(heatmap)
            if s + 1 < self.num_stacks:
                x = x + self.merge_features[s](features) + self.merge_heatmaps[s](heatmap)
        if self.outputs == "list":
            return heatmaps
        return torch.cat(heatmaps, dim=1)

    def split_stacks(self, output: Tensor) -> Tensor:
        """View the ``[N, S*J, H, W]`` output as ``[N, S, J, H, W]`` (stack, joint)."""
        n, _, h, w = output.shape
        return output.view(n, self.num_stacks, self.num_joints, h, w)


def hourglass(
    num_stacks: int = 2,
    num_joints: int = 8,
    depth: int = 3,
    width: int = 64,
    in_channels: int = 3,
    *,
    block: str = "basic",
    outputs: str = "concat",
) -> HourGlassNet:
    """A small stacked HourGlass; output ``[N, num_stacks * num_joints, H/4, W/4]``, or a
    list of ``num_stacks`` tensors ``[N, num_joints, H/4, W/4]`` with ``outputs="list"``."""
    return HourGlassNet(num_stacks, num_joints, depth, width, in_channels, block, outputs)
