"""Channel splits and model constants in every spelling: ShuffleNet-V2's split
(``x.chunk(2, dim=1)``, ``torch.chunk``, ``x.split``, ``torch.split``, ``x[:, a:b]``) and the
tensors a forward reads from its attributes (ConvNeXt's layer scale ``gamma * y``, a per-channel
bias, torchvision's ``LayerNorm2d`` with ``F.layer_norm``). Each spelling converts, fine-tunes a
step, packs and predicts what the student computes; what the runtime cannot run is a
ConversionError naming the node."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
import runtime
from operators.errors import ConversionError
from passes.export import lower
from passes.trace import trace
from tests.deploy_check import deploy_and_compare

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Split = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _train_and_compare(model: nn.Module, x: torch.Tensor, recipe: str) -> runtime.Model:
    return deploy_and_compare(model, x, recipe, lr=1e-2)


def _labels(packed: runtime.Model) -> list[str]:
    return [op for step in packed.plan for op in step.label.split("+")]


# ---------------------------------------------------------------- channel splits
SPLITS: dict[str, Split] = {
    "chunk_method": lambda x: x.chunk(2, dim=1),
    "torch_chunk": lambda x: torch.chunk(x, 2, 1),
    "chunk_negative_dim": lambda x: x.chunk(2, -3),
    "split_method_sized": lambda x: x.split(x.size(1) // 2, dim=1),
    "torch_split_list": lambda x: torch.split(x, [8, 8], dim=1),
    "slices": lambda x: (x[:, :8], x[:, 8:]),
    "slices_computed": lambda x: (x[:, : x.shape[1] // 2, :, :], x[:, x.shape[1] // 2 :, ...]),
}


class ShuffleUnitNet(nn.Module):
    """A stem, one stride-1 ShuffleNet-V2 unit (split, transform the second half, concat,
    shuffle) with the split spelled as given, a binary conv and a classifier."""

    def __init__(self, split: str) -> None:
        super().__init__()
        self.split = SPLITS[split]
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
        )  # fmt: skip
        self.shuffle = nn.ChannelShuffle(2)
        self.mix = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x1, x2 = self.split(x)
        x = self.shuffle(torch.cat((x1, self.branch(x2)), dim=1))
        return self.fc(self.mix(x).mean((2, 3)))


@pytest.mark.parametrize("split", list(SPLITS))
def test_channel_split_packs_two_channel_slices(split: str) -> None:
    torch.manual_seed(10)
    recipe = "reactnet" if len(split) % 2 else "xnor"  # both recipes, over the spellings
    packed = _train_and_compare(ShuffleUnitNet(split), torch.randn(64, 3, 8, 8), recipe)
    assert _labels(packed).count("channel_slice") == 2


class UnevenSplits(nn.Module):
    """Pieces of unequal size: chunk(3) of 16 channels (6, 6, 4), split([4, 12]), a slice
    with a negative stop, and a chunk of [N, F] features; a piece nobody reads costs nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.convs = nn.ModuleList(nn.Conv2d(c, 6, 3, padding=1) for c in (6, 6, 4, 12, 11))
        self.fc_a = nn.Linear(15, 5)
        self.fc_b = nn.Linear(15, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b, c = x.chunk(3, dim=1)
        _, d = x.split([4, 12], dim=1)
        e = x[:, 2:-3]
        parts = [conv(p) for conv, p in zip(self.convs, (a, b, c, d, e))]
        features = torch.cat([p.mean((2, 3)) for p in parts], dim=1)  # [N, 30]
        first, second = features.chunk(2, dim=1)
        return self.fc_a(first) + self.fc_b(second)


def test_uneven_pieces_and_feature_splits_match_torch() -> None:
    torch.manual_seed(11)
    packed = _train_and_compare(UnevenSplits(), torch.randn(64, 3, 6, 6), "xnor")
    # a, b, c, d (x[:, 4:16]), e; the first piece of the split is never read; two of features
    assert _labels(packed).count("channel_slice") == 7


# ---------------------------------------------------------------- constants
class LayerScaleBlock(nn.Module):
    """ConvNeXt-style: depthwise conv -> channels-last LayerNorm / Linear / GELU / Linear ->
    a layer scale in the spelling given -> back to NCHW -> residual; then an NCHW per-channel
    scale and bias (a parameter and a buffer) and a classifier."""

    SCALES: ClassVar[dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
        "gamma_times_y": lambda g, y: g * y,
        "y_times_gamma": lambda g, y: y * g,
        "mul_method": lambda g, y: y.mul(g),
        "torch_mul": lambda g, y: torch.mul(g, y),
        "viewed": lambda g, y: y * g.view(1, 1, 1, -1),
        "halved": lambda g, y: (g * y) * 0.5,  # a number inside the channels-last region
    }

    def __init__(self, scale: str) -> None:
        super().__init__()
        self.scale = self.SCALES[scale]
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dwconv = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16, eps=1e-6)
        self.pwconv1 = nn.Linear(16, 32)
        self.pwconv2 = nn.Linear(32, 16)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)
        self.channel_scale = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.register_buffer("channel_bias", torch.randn(1, 16, 1, 1))
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        x = x + self.scale(self.gamma, y).permute(0, 3, 1, 2)
        x = x * self.channel_scale + self.channel_bias
        return self.head(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("scale", list(LayerScaleBlock.SCALES))
def test_layer_scale_and_channel_bias_are_affines(scale: str) -> None:
    torch.manual_seed(12)
    recipe = "reactnet" if len(scale) % 2 else "xnor"
    packed = _train_and_compare(LayerScaleBlock(scale), torch.randn(64, 3, 8, 8), recipe)
    assert "affine" in _labels(packed)


class LayerNorm2dNet(nn.Module):
    """torchvision's LayerNorm2d (permute -> F.layer_norm with the module's weight and bias ->
    permute), F.layer_norm without weight and bias, and F.layer_norm on [N, F] features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.weight = nn.Parameter(torch.rand(12) + 0.5)
        self.bias = nn.Parameter(torch.randn(12))
        self.conv = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.fc_weight = nn.Parameter(torch.rand(12) + 0.5)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)
        x = F.layer_norm(x, (12,), self.weight, self.bias, 1e-6)
        x = F.layer_norm(x, [12]).permute(0, 3, 1, 2)
        features = self.conv(x).mean((2, 3))
        return self.head(F.layer_norm(features, (12,), weight=self.fc_weight, eps=1e-5))


@pytest.mark.parametrize("recipe", ["reactnet", "xnor"])
def test_functional_layer_norm_with_constants(recipe: str) -> None:
    torch.manual_seed(13)
    packed = _train_and_compare(LayerNorm2dNet(), torch.randn(64, 3, 8, 8), recipe)
    assert _labels(packed).count("layernorm_channels") == 3


def test_constants_are_read_when_packing() -> None:
    """The exported affine holds the parameter's value at pack time (through the view that
    the export evaluates), not its value at convert time."""
    net = LayerScaleBlock("viewed").eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        net.gamma.copy_(torch.arange(16.0) - 3)
    program = lower(trace(net), (x,))
    affine = next(n for n in program.nodes if n.op == "affine")
    np.testing.assert_array_equal(affine.params["scale"], np.arange(16.0) - 3)
    np.testing.assert_array_equal(affine.params["bias"], np.zeros(16))


# ---------------------------------------------------------------- what is refused, and how
class Body(nn.Module):
    def __init__(self, body: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)  # [N, 6, 6, 6]
        self.body = body
        self.per_pixel = nn.Parameter(torch.rand(6, 6, 6))
        self.scale = nn.Parameter(torch.rand(6, 1, 1))
        self.register_buffer("wide", torch.rand(6, 1, 1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self, self.conv(x))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lambda m, x: x * m.per_pixel, r"constant 'per_pixel' of shape \[6, 6, 6\]"),
        (lambda m, x: x - m.scale, "it reads the constant tensor 'scale'"),
        (lambda m, x: torch.cat([x, m.per_pixel.expand(2, 6, 6, 6)], 1), "constant tensor"),
        (lambda m, x: x * m.wide, "torch.float64"),
        (lambda m, x: F.layer_norm(x, (6,)), "F.layer_norm over the last dims of an NCHW"),
        (lambda m, x: F.layer_norm(x.permute(0, 2, 3, 1), (6, 6)), r"LayerNorm\(6, 6\) on 6"),
        (lambda m, x: x[0], r"indexing a tensor with \[0\]"),
        (lambda m, x: x[:, :, 1:3], r"\[:, :, 1:3\]"),
        (lambda m, x: x[:, ::2], r"\[:, ::2\]"),
        (lambda m, x: x.chunk(2, dim=2)[0], "a split along dim 2"),
        (lambda m, x: x.chunk(2)[0], "a split along dim 0"),
        (lambda m, x: x[:, 4:2], r"empty channel range \[4, 2\)"),
        (lambda m, x: x.chunk(2, 1), "the tuple of pieces of a channel split"),
        (lambda m, x: torch.cat(x.chunk(2, 1), 1), "concatenates a tuple made by another node"),
        (lambda m, x: x.permute(0, 2, 3, 1).chunk(2, -1)[0], "splits a channels-last"),
    ],
)
def test_unsupported_uses_are_named(body, message: str) -> None:
    with pytest.raises(ConversionError, match=message) as error:
        binarize.convert(Body(body), recipe="xnor", example_inputs=(torch.randn(2, 3, 6, 6),))
    assert "cannot pack node '" in str(error.value)
