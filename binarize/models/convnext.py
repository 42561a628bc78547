"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s", arXiv 2201.03545).

The authors' layout: a 4x4 stride-4 "patchify" stem conv and a channels-first LayerNorm,
four stages of ConvNeXt blocks with ``width x (1, 2, 4, 8)`` channels, a channels-first
LayerNorm and a 2x2 stride-2 conv between stages, then the mean over H and W, a LayerNorm and
a linear head. A block is written as in the paper's code, channels-last in its middle::

    y = dwconv7x7(x)                      # depthwise, [N, C, H, W]
    y = y.permute(0, 2, 3, 1)             # [N, H, W, C]
    y = pwconv2(gelu(pwconv1(norm(y))))   # LayerNorm over C, Linear C -> 4C -> C
    y = gamma * y                         # layer scale (optional), one factor per channel
    out = x + y.permute(0, 3, 1, 2)

A channels-first LayerNorm (:class:`LayerNorm2d`, torchvision's spelling) normalises each
pixel's channel vector: ``(x - mean_c x) / sqrt(var_c x + eps) * weight + bias``, computed as
``permute(0, 2, 3, 1) -> layer_norm over the last dim -> permute(0, 3, 1, 2)``. The paper's
stochastic depth (a training regulariser, the identity at inference) is left out.

Example::

    >>> model = convnext(num_classes=10, width=16, depths=(1, 1, 1, 1))
    >>> model(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvNeXt", "ConvNeXtBlock", "LayerNorm2d", "convnext"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``[N, C, H, W]`` tensor (torchvision's spelling)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block (see the module docstring); ``gamma`` is None without layer scale."""

    def __init__(self, dim: int, layer_scale_init: float | None = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            if layer_scale_init is not None
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x)
        y = y.permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt: ``stem``, ``stages`` and ``downsample`` (three transitions), ``norm``,
    ``head``.

    Args:
        num_classes: outputs of the head.
        in_channels: channels of the input image.
        width: channels of the first stage (96 in ConvNeXt-T); stage ``i`` has ``width 2^i``.
        depths: blocks per stage ((3, 3, 9, 3) in ConvNeXt-T).
        layer_scale_init: initial value of every block's layer scale ``gamma``; None for
            blocks without one.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 96,
                 depths: Sequence[int] = (3, 3, 9, 3),
                 layer_scale_init: float | None = 1e-6) -> None:  # fmt: skip
        super().__init__()
        if width < 1 or len(depths) != 4 or min(depths) < 1:
            raise ValueError(
                f"ConvNeXt needs width >= 1 and 4 stages of >= 1 block, got width={width}, "
                f"depths={depths}"
            )
        dims = [width * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4),
            LayerNorm2d(dims[0], eps=1e-6),
        )
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dims[i], eps=1e-6),
                          nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            for i in range(3)
        )  # fmt: skip
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim, layer_scale_init) for _ in range(depth)))
            for dim, depth in zip(dims, depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages[0](self.stem(x))
        for down, stage in zip(self.downsample, self.stages[1:]):
            x = stage(down(x))
        return self.head(self.norm(x.mean([-2, -1])))


def convnext(num_classes: int = 1000, in_channels: int = 3, width: int = 96,
             depths: Sequence[int] = (3, 3, 9, 3),
             layer_scale_init: float | None = 1e-6) -> ConvNeXt:  # fmt: skip
    """ConvNeXt; at the defaults ConvNeXt-T (28,589,128 parameters at 1000 classes)."""
    return ConvNeXt(num_classes, in_channels, width, depths, layer_scale_init)
