"""binarize.pack: the op list it lowers to, the errors it raises, the file it writes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import binarize
import runtime
from binarize.pack import lower_for_runtime


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
    binarize.nn.set_binarization(bnn, weights=False)
    with pytest.warns(UserWarning, match="weights not binarized"):
        binarize.pack(bnn, (X,))


class Sigmoidal(Plain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(x))


class Gelu(Plain):
    def __init__(self) -> None:
        super().__init__(act=nn.GELU)


def test_unsupported_function_names_the_node() -> None:
    bnn = binarize.convert(Sigmoidal(), recipe="reactnet", example_inputs=(X,))
    with pytest.raises(binarize.ConversionError, match=r"node 'sigmoid'.*no runtime op"):
        binarize.pack(bnn, (X,))


def test_unsupported_module_names_the_node_and_the_type() -> None:
    bnn = binarize.convert(Gelu(), recipe="xnor", example_inputs=(X,), activation=None)
    with pytest.raises(binarize.ConversionError, match=r"GELU has no runtime op"):
        binarize.pack(bnn, (X,))


def test_pack_needs_a_converted_model_and_one_float_input() -> None:
    with pytest.raises(binarize.ConversionError, match=r"binarize\.convert"):
        binarize.pack(Plain(), (X,))
    bnn = binarize.convert(Plain(), recipe="xnor", example_inputs=(X,))
    with pytest.raises(binarize.ConversionError, match="exactly one example input"):
        binarize.pack(bnn, (X, X))
    with pytest.raises(binarize.ConversionError, match="float32"):
        binarize.pack(bnn, (X.double(),))


def test_weights_are_packed_one_bit_each() -> None:
    bnn = binarize.convert(Plain(), recipe="xnor", example_inputs=(X,))
    program = lower_for_runtime(bnn, (X,))
    bconvs = [n for n in program.nodes if n.op == "bconv2d"]
    for node in bconvs:
        weight = node.params["weight"]
        assert weight.dtype == np.uint64
        o, kh, kw, words = weight.shape
        assert (o, kh, kw, words) == (node.attrs["out_channels"], 3, 3, 1)
