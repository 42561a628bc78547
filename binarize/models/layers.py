"""Building blocks shared by the model zoo: channel rounding, conv-BN-activation and the
squeeze-excitation gate, written as torchvision writes them (so graphs trace to the same
structure as the torchvision models users convert).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["ConvBNAct", "SqueezeExcitation", "make_divisible"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10% below ``value`` (torchvision's ``_make_divisible``, from the TensorFlow
    MobileNet code): ``r = max(d, floor((v + d/2) / d) d)``, plus ``d`` when ``r < 0.9 v``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """``activation(bn(conv(x)))``: a bias-free ``kernel x kernel`` conv with "same" padding
    ``(kernel - 1) // 2``, BatchNorm, then ``activation`` (none when it is None)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[[], nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]  # fmt: skip
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018, arXiv 1709.01507), torchvision's layout.

    ``s = gate(fc2(activation(fc1(mean_{h,w} x))))`` with ``fc1`` / ``fc2`` 1x1 convs
    (``C -> squeeze -> C``) on the pooled ``[N, C, 1, 1]`` vector; the output is ``s * x``,
    each channel of the trunk ``x`` scaled by its gate in (0, 1).
    """

    def __init__(
        self,
        channels: int,
        squeeze: int,
        activation: Callable[[], nn.Module] = nn.ReLU,
        gate: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x
