"""Structural spellings of modern CPU networks: adaptive pools (VGG's 7x7), bilinear
upsampling with a dict output (FCN heads), the channel shuffle (ShuffleNet-V2) and the
channels-last LayerNorm / Linear region (ConvNeXt). Each op is checked against torch, and each
spelling converts, fine-tunes a step, packs and predicts what the student computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
import runtime
from operators import ApproxSign, BinaryLinear
from operators.errors import ConversionError
from passes.export import fold, lower
from passes.trace import trace
from runtime.format import write_model
from runtime.ops import pooling, shape
from runtime.schema import Graph
from tests.deploy_check import deploy_and_compare


def nhwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))


def nchw(y: np.ndarray) -> np.ndarray:
    return y.transpose(0, 3, 1, 2)


# ---------------------------------------------------------------- the ops against torch
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 7), (4, 11), (13, 9)])
def test_adaptive_pools_equal_torch(size: tuple[int, int]) -> None:
    x = torch.randn(2, 5, 10, 9)
    avg = pooling.adaptive_avgpool2d([nhwc(x)], {}, {"size": size})
    np.testing.assert_allclose(nchw(avg), F.adaptive_avg_pool2d(x, size).numpy(), atol=1e-6)
    top = pooling.adaptive_maxpool2d([nhwc(x)], {}, {"size": size})
    np.testing.assert_array_equal(nchw(top), F.adaptive_max_pool2d(x, size).numpy())


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("in_hw", "out_hw"), [((4, 5), (8, 10)), ((3, 3), (7, 12)),
                                               ((6, 8), (3, 5)), ((1, 4), (5, 4))])  # fmt: skip
def test_bilinear_upsampling_equals_torch(align_corners: bool, in_hw, out_hw) -> None:
    x = torch.randn(2, 6, *in_hw)
    attrs = {"size": out_hw, "align_corners": align_corners}
    got = nchw(shape.upsample_bilinear([nhwc(x)], {}, attrs))
    expected = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=align_corners)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("channels", "groups"), [(8, 2), (12, 3), (12, 4), (7, 7)])
def test_channel_shuffle_equals_torch(channels: int, groups: int) -> None:
    x = torch.randn(2, channels, 3, 4)
    got = nchw(shape.channel_shuffle([nhwc(x)], {}, {"groups": groups}))
    np.testing.assert_array_equal(got, F.channel_shuffle(x, groups).numpy())


def test_layernorm_channels_equals_torch() -> None:
    norm = nn.LayerNorm(24, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(3, 24, 5, 4) * 3 + 1
    params = {"weight": norm.weight.detach().numpy(), "bias": norm.bias.detach().numpy()}
    got = nchw(shape.layernorm_channels([nhwc(x)], params, {"eps": 1e-6}))
    with torch.no_grad():
        expected = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- models
def channel_shuffle_view(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's spelling (the size arithmetic traces to a floordiv node)."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


SHUFFLES = {
    "torchvision": lambda: channel_shuffle_view,
    "method_transpose": lambda: (
        lambda x, g: (
            x.reshape(x.shape[0], g, -1, x.shape[2], x.shape[3]).transpose(1, 2).reshape(x.shape)
        )
    ),
    "permute_flatten": lambda: (
        lambda x, g: (
            x.view(x.size(0), g, x.size(1) // g, x.size(2), x.size(3))
            .permute(0, 2, 1, 3, 4)
            .contiguous()
            .flatten(1, 2)
        )
    ),
    "module": lambda: nn.ChannelShuffle(2),
    "function": lambda: F.channel_shuffle,
}


class ShuffleBlock(nn.Module):
    """A ShuffleNet-V2 downsampling unit (both branches read the whole input) and a second
    concat-and-shuffle, each shuffle in the spelling given."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        made = SHUFFLES[spelling]()
        self.shuffle = made if isinstance(made, nn.Module) else (lambda x: made(x, 2))
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch1 = nn.Sequential(
            nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16),
            nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.branch2 = nn.Sequential(
            nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16),
            nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.mix = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.shuffle(torch.cat((self.branch1(x), self.branch2(x)), dim=1))
        x = self.shuffle(torch.cat((x, self.mix(x)), dim=1))
        return self.fc(x.mean((2, 3)))


PERMUTES = {
    "method": lambda x: x.permute(0, 2, 3, 1),
    "list": lambda x: x.permute([0, 2, 3, 1]),
    "torch": lambda x: torch.permute(x, (0, 2, 3, 1)),
}
UNPERMUTES = {
    "method": lambda y: y.permute(0, 3, 1, 2),
    "list": lambda y: y.permute([0, -1, 1, 2]),
    "torch": lambda y: torch.permute(y, (0, 3, 1, 2)),
}


class ConvNeXtNet(nn.Module):
    """Stem conv, one ConvNeXt block (depthwise 7x7 -> permute -> LayerNorm -> Linear ->
    activation -> Linear -> permute -> residual add), a classifier."""

    def __init__(self, spelling: str, activation: str) -> None:
        super().__init__()
        self.permute, self.unpermute = PERMUTES[spelling], UNPERMUTES[spelling]
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dwconv = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16, eps=1e-6)
        self.pwconv1 = nn.Linear(16, 64)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.pwconv2 = nn.Linear(64, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.permute(self.dwconv(x))
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return self.head((x + self.unpermute(y)).mean((2, 3)))


class VGGHead(nn.Module):
    """VGG/AlexNet-style: features (7x7 inputs stay 7x7; 16x16 ones are pooled to 8x8),
    adaptive pooling to 7x7 (nothing at a 7x7 feature map; overlapping bins at 8x8), adaptive
    max pooling with a None entry, a classifier."""

    def __init__(self, downsample: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2) if downsample else nn.Identity(),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.maxpool = nn.AdaptiveMaxPool2d((3, None))
        self.fc = nn.Linear(16 * 49 + 16 * 3 * 7 + 16 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.avgpool(self.features(x))
        parts = [h, self.maxpool(h), F.adaptive_avg_pool2d(h, 2)]
        return self.fc(torch.cat([torch.flatten(p, 1) for p in parts], 1))


def _train_and_compare(model: nn.Module, x: torch.Tensor, recipe: str, **options) -> runtime.Model:
    return deploy_and_compare(model, x, recipe, lr=1e-3, **options)


@pytest.mark.parametrize("spelling", list(SHUFFLES))
def test_shufflenet_unit_packs_one_channel_shuffle(spelling: str, one_torch_thread) -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 3, 8, 8)
    packed = _train_and_compare(ShuffleBlock(spelling), x, "xnor")
    assert [s.label for s in packed.plan].count("channel_shuffle") == 2


@pytest.mark.parametrize(
    ("spelling", "activation", "recipe"),
    [("method", "gelu", "xnor"), ("list", "relu", "bireal"), ("torch", "gelu", "reactnet")],
)
def test_convnext_block_packs_channels_last(spelling, activation, recipe, one_torch_thread):
    torch.manual_seed(2)
    x = torch.randn(64, 3, 8, 8)
    packed = _train_and_compare(ConvNeXtNet(spelling, activation), x, recipe)
    labels = [s.label for s in packed.plan]
    assert "layernorm_channels" in labels and (activation in labels or "conv2d+relu" in labels)


@pytest.mark.parametrize("downsample", [False, True])
def test_vgg_adaptive_pool_to_7x7(downsample: bool, one_torch_thread) -> None:
    torch.manual_seed(3)
    x = torch.randn(64, 3, 16 if downsample else 7, 16 if downsample else 7)
    packed = _train_and_compare(VGGHead(downsample), x, "reactnet")
    labels = [s.label for s in packed.plan]
    # at a 7x7 feature map the 7x7 pool is nothing; at 14x14 it is a real one
    assert labels.count("adaptive_avgpool2d") == (2 if downsample else 1)
    assert "adaptive_maxpool2d" in labels


class FCNHead(nn.Module):
    """An FCN-style segmentation net returning {"out": ..., "aux": ...}, upsampled bilinearly
    to the input size in three spellings."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.deep = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16))
        self.classifier = nn.Conv2d(16, 4, 1)
        self.aux_classifier = nn.Conv2d(16, 4, 1)
        self.up4 = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
        self.up2 = nn.UpsamplingBilinear2d(scale_factor=2)  # align_corners=True

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        deep = self.deep(features)
        out = self.classifier(deep)
        out = self.up4(out) + F.interpolate(
            out, size=x.shape[-2:], mode="bilinear", align_corners=True
        )
        aux = self.up2(self.aux_classifier(features))
        return {"out": out, "aux": aux}


def test_fcn_head_with_bilinear_upsampling_returns_a_dict(one_torch_thread) -> None:
    torch.manual_seed(4)
    x = torch.randn(16, 3, 12, 12)
    bnn = binarize.convert(FCNHead(), recipe="bireal", example_inputs=(x[:2],))
    target = torch.randn(16, 4, 12, 12)
    optimizer = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    for _ in range(3):  # finetune takes class outputs; a dict output trains by hand
        result = bnn(x)
        loss = F.mse_loss(result["out"], target) + F.mse_loss(result["aux"], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    bnn.schedule.finalize(bnn)
    packed = runtime.load(binarize.pack(bnn, example_inputs=(x[:2],)))
    assert [spec.key for spec in packed.outputs] == ["out", "aux"]
    got = packed.predict(x.numpy())
    with torch.no_grad():
        expected = bnn.eval()(x)
    assert list(got) == ["out", "aux"]
    for key in got:
        close = np.isclose(got[key], expected[key].numpy(), rtol=1e-4, atol=1e-4)
        assert close.all(axis=(1, 2, 3)).mean() >= 0.9, key
    labels = [s.label for s in packed.plan]
    assert labels.count("upsample_bilinear") == 3


def test_binary_linear_on_channels_last_is_a_1x1_bconv() -> None:
    """A BinaryLinear written by hand between the permutes: quantize + 1x1 bconv2d + affine."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 70, 3, padding=1)
            self.pw = BinaryLinear(70, 9, input_binarizer=ApproxSign())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pw(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    torch.manual_seed(5)
    net = Net().eval()
    x = torch.randn(4, 3, 5, 5)
    program = fold(lower(trace(net), (x,)))
    assert [n.op for n in program.nodes] == ["conv2d", "quantize", "bconv2d", "affine"]
    got = runtime.load(write_model(None, *program.to_file_parts())).predict(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-5, atol=1e-5)
    assert isinstance(program, Graph)


# ---------------------------------------------------------------- what is refused, and how
class Region(nn.Module):
    def __init__(self, body) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)  # [N, 6, 6, 6]: a permute keeps the shape
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv(x))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lambda x: x.view(x.size(0), 2, 3, 6, 6).sum(1), "channel shuffle, x.view"),
        (lambda x: x.view(x.size(0), 2, 3, 6, 6).transpose(1, 3).reshape(x.shape), "channel"),
        (lambda x: x.transpose(2, 3), "a transpose outside the channel-shuffle pattern"),
        (lambda x: x.permute(0, 2, 3, 1).mean(-1), "Between x.permute"),
        (lambda x: x.permute(0, 2, 3, 1) + x, "mixes a channels-last tensor"),
        (lambda x: x.permute(0, 2, 3, 1), "channels-last"),
        (lambda x: x.permute(0, 3, 2, 1), "permute to"),
        (lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear"), "scale_factor=1.5"),
    ],
)
def test_unsupported_structure_is_named(body, message: str) -> None:
    with pytest.raises(ConversionError, match=message) as error:
        binarize.convert(Region(body), recipe="xnor", example_inputs=(torch.randn(2, 3, 6, 6),))
    assert "floordiv" not in str(error.value)


def test_shape_arithmetic_on_sizes_is_evaluated() -> None:
    """x.size(1) // 2 and friends trace to Python-operator nodes; the export evaluates them."""

    def body(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        return x.view(n, (c * 2) // 4 - 4 + 4, -(-c // 4) * 4 // (c // 2), h % 7 + 0 * w, w)

    model = Region(lambda x: channel_shuffle_view(body(x).reshape(x.shape), x.size(1) // 4))
    x = torch.randn(2, 3, 6, 6)
    bnn = binarize.convert(model, recipe="xnor", example_inputs=(x,))
    packed = runtime.load(binarize.pack(bnn, example_inputs=(x,)))
    with torch.no_grad():
        np.testing.assert_allclose(packed.predict(x.numpy()), bnn.eval()(x).numpy(), atol=1e-5)
    assert [s.label for s in packed.plan] == ["conv2d", "channel_shuffle"]
