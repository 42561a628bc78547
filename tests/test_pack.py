"""binarize.pack: the op list it lowers to, the errors it raises, the file it writes."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import binarize
import operators
import runtime
from binarize import models
from binarize.pack import lower_for_runtime
from operators import Binarizer


class Plain(nn.Module):
    """conv-BN-ReLU x3, global pool, linear: the smallest net with two binary convs."""

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32)
        self.act1, self.act2, self.act3 = act(), act(), act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.b1(self.c1(x)))
        x = self.act2(self.b2(self.c2(x)))
        x = self.act3(self.b3(self.c3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


X = torch.randn(2, 3, 16, 16)


def ops(recipe: str, **overrides) -> Counter[str]:
    bnn = binarize.convert(Plain(), recipe=recipe, example_inputs=(X,), **overrides)
    return Counter(node.op for node in lower_for_runtime(bnn, (X,)).nodes)


def test_xnor_folds_batchnorm_and_scale_into_integer_thresholds() -> None:
    """No shortcut between bconv and the next binarizer: BN, alpha and the bias fold away."""
    counts = ops("xnor")
    assert counts["bconv2d"] == 2
    assert counts["quantize"] == 2
    assert counts["conv2d"] == 1 and counts["dense"] == 1
    # the stem's BN folds into the first quantize, c2's BN into the second: one affine left,
    # the last binary conv's (alpha * acc + bias then BN, merged), read by the final ReLU.
    assert counts["affine"] == 1


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("bireal", {"bconv2d": 2, "quantize": 2, "add": 1}),
        ("bulat", {"bconv2d": 2, "quantize": 2, "prelu": 3}),
        ("reactnet", {"bconv2d": 2, "quantize": 2, "rprelu": 3, "add": 1}),
        ("dybnn", {"bconv2d": 2, "dyquantize": 2, "dyprelu": 3, "add": 1}),
    ],
)
def test_each_recipe_lowers_to_its_blocks(recipe: str, expected: dict[str, int]) -> None:
    counts = ops(recipe)
    for op, n in expected.items():
        assert counts[op] == n, (op, counts)
    assert counts["relu"] == 0


def test_written_file_is_what_pack_returns(tmp_path) -> None:
    bnn = binarize.convert(Plain(), recipe="reactnet", example_inputs=(X,)).eval()
    path = tmp_path / "model.bnn"
    data = binarize.pack(bnn, (X,), path=path)
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["model.bnn"]  # no temp file left behind
    model = runtime.load(path)
    assert model.predict(X.numpy()).shape == (2, 10)


def test_soft_training_state_warns_and_names_the_parts() -> None:
    bnn = binarize.convert(Plain(), recipe="reactnet", example_inputs=(X,))
    operators.set_binarization(bnn, weights=False)
    with pytest.warns(UserWarning, match=r"c2 \(weights not binarized\), c3 \(weights not"):
        binarize.pack(bnn, (X,))


def test_disabled_binarizers_warn_and_are_named() -> None:
    bnn = binarize.convert(Plain(), recipe="reactnet", example_inputs=(X,))
    operators.set_binarization(bnn, activations=False)
    with pytest.warns(UserWarning, match=r"c2\.input_binarizer \(binarizer disabled\)"):
        binarize.pack(bnn, (X,))


def test_progressive_lambda_below_its_maximum_warns() -> None:
    bnn = binarize.convert(Plain(), recipe="bulat", example_inputs=(X,))  # lambda starts at 1
    with pytest.warns(UserWarning, match=r"c3\.input_binarizer \(progressive lambda 1 < \d+\)"):
        binarize.pack(bnn, (X,))
    bnn.schedule.finalize(bnn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finalized: the hard network, nothing to warn about
        binarize.pack(bnn, (X,))


def test_soft_state_warning_lists_five_parts_then_counts_the_rest() -> None:
    x = torch.randn(2, 1, 16, 16)
    bnn = binarize.convert(models.resnet_small(width=8), recipe="bulat", example_inputs=(x,))
    with pytest.warns(UserWarning) as record:
        binarize.pack(bnn, (x,))
    (message,) = [str(w.message) for w in record]
    soft = sum(isinstance(m, Binarizer) for m in bnn.student.modules())
    assert soft > 5
    assert message.count("progressive lambda") == 5
    assert f" and {soft - 5} more." in message


class Sines(Plain):
    """A function the runtime has no op for (``torch.sin``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(super().forward(x))


class Softplussed(Plain):
    """A module the runtime has no op for (``nn.Softplus``)."""

    def __init__(self) -> None:
        super().__init__(act=nn.Softplus)


def test_unsupported_function_fails_at_convert_with_the_source_line() -> None:
    with pytest.raises(binarize.ConversionError) as info:
        binarize.convert(Sines(), recipe="reactnet", example_inputs=(X,))
    message = str(info.value)
    assert "node 'sin'" in message and "no runtime op" in message
    assert "test_pack.py" in message and "return torch.sin(super().forward(x))" in message
    assert "before training" in message


def test_unsupported_function_names_the_node_at_pack_too() -> None:
    bnn = binarize.convert(Sines(), recipe="reactnet", example_inputs=(X,), export_check="off")
    with pytest.raises(binarize.ConversionError, match=r"node 'sin'.*no runtime op"):
        binarize.pack(bnn, (X,))


def test_unsupported_module_names_the_node_and_the_type() -> None:
    with pytest.warns(UserWarning, match=r"Softplus has no runtime op"):
        bnn = binarize.convert(
            Softplussed(), recipe="xnor", example_inputs=(X,), activation=None,
            export_check="warn",
        )  # fmt: skip
    with pytest.raises(binarize.ConversionError, match=r"Softplus has no runtime op"):
        binarize.pack(bnn, (X,))


def test_pack_needs_a_converted_model_and_one_float_input() -> None:
    with pytest.raises(binarize.ConversionError, match=r"binarize\.convert"):
        binarize.pack(Plain(), (X,))
    bnn = binarize.convert(Plain(), recipe="xnor", example_inputs=(X,))
    with pytest.raises(binarize.ConversionError, match="exactly one example input"):
        binarize.pack(bnn, (X, X))
    with pytest.raises(binarize.ConversionError, match="float32"):
        binarize.pack(bnn, (X.double(),))


class Wide(nn.Module):
    """Binary convs with 70 and 130 input channels (2 and 3 words, the last one partly
    padding) and a binary linear layer with 8*6*7 = 336 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 70, 3, padding=1), nn.BatchNorm2d(70), nn.ReLU(),
            nn.Conv2d(70, 130, 3, padding=1), nn.BatchNorm2d(130), nn.ReLU(),
            nn.Conv2d(130, 8, (3, 2), padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        )  # fmt: skip
        self.fc1 = nn.Linear(8 * 6 * 7, 20)
        self.fc2 = nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.body(x))))


def unpack_bits(words: np.ndarray, channels: int) -> np.ndarray:
    """uint64[..., W] -> 0/1 uint8[..., W*64] by the documented order: bit j of word w is
    channel 64*w + j (docs/IR.md, "Values")."""
    out = np.zeros((*words.shape[:-1], words.shape[-1] * 64), np.uint8)
    for c in range(out.shape[-1]):
        out[..., c] = (words[..., c // 64] >> np.uint64(c % 64)) & np.uint64(1)
    return out


def test_weights_are_packed_one_bit_each() -> None:
    """Every packed weight bit is sign(W) (1 for W >= 0, so sign(0) = +1) at the documented
    bit position, and the padding bits past the last channel are 0."""
    x = torch.randn(2, 3, 6, 6)
    bnn = binarize.convert(Wide(), recipe="xnor", example_inputs=(x,), keep_float=["body.0"])
    layers = dict(bnn.student.named_modules())
    with torch.no_grad():
        layers["body.3"].weight[5, 66, 1, 2] = 0.0  # word 1, bit 2: sign(0) must pack as +1
    program = lower_for_runtime(bnn, (x,))
    binary = [n for n in program.nodes if n.op in ("bconv2d", "bdense")]
    assert [n.op for n in binary] == ["bconv2d", "bconv2d", "bdense"]
    for node, name, in_channels in zip(binary, ["body.3", "body.6", "fc1"], [70, 130, 336]):
        latent = layers[name].weight.detach().numpy()
        words = node.params["weight"]
        assert words.dtype == np.uint64
        if node.op == "bconv2d":  # [O, C, kh, kw] -> [O, kh, kw, C], channels last
            latent = latent.transpose(0, 2, 3, 1)
        assert words.shape == (*latent.shape[:-1], -(-in_channels // 64)), name
        bits = unpack_bits(words, in_channels)
        np.testing.assert_array_equal(bits[..., :in_channels], latent >= 0, err_msg=name)
        assert not bits[..., in_channels:].any(), name
