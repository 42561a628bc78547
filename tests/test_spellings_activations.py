"""The activations of modern CPU networks (Hardswish, SiLU, GELU, Sigmoid, Hardsigmoid) and the
squeeze-excitation product, in every spelling of passes/spellings.py, in a small
MobileNet-V3-like block: each case converts, fine-tunes a step, packs and runs in the runtime
with the student's outputs (the pattern of tests/test_spellings.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
import runtime
from operators import BinaryConv2d

ACTS = {
    "hardswish": lambda: nn.Hardswish(),
    "hardswish_inplace": lambda: nn.Hardswish(inplace=True),
    "F.hardswish": lambda: lambda x: F.hardswish(x, inplace=True),
    "silu": lambda: nn.SiLU(),
    "F.silu": lambda: F.silu,
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "F.gelu_tanh": lambda: lambda x: F.gelu(x, approximate="tanh"),
    "F.gelu": lambda: F.gelu,
}
GATES = {
    "hardsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "F.hardsigmoid": lambda: F.hardsigmoid,
    "sigmoid": lambda: nn.Sigmoid(),
    "torch.sigmoid": lambda: torch.sigmoid,
    "F.sigmoid": lambda: F.sigmoid,
    "method": lambda: lambda x: x.sigmoid(),
}


def _imul(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    x *= s
    return x


MULS = {
    "gate_first": lambda x, s: s * x,  # as torchvision's SqueezeExcitation writes it
    "gate_second": lambda x, s: x * s,
    "torch.mul": lambda x, s: torch.mul(x, s),
    "method": lambda x, s: x.mul(s),
    "inplace": lambda x, s: x.mul_(s),
    "imul": _imul,
}
SCALES = {  # a constant factor: lowered to an affine
    "none": lambda h: h,
    "right": lambda h: h * 0.5,
    "left": lambda h: 2 * h,
}


class SqueezeExcite(nn.Module):
    """s = gate(fc2(relu(fc1(mean_hw(x))))), the output x * s (s per sample and channel)."""

    def __init__(self, channels: int, hidden: int, gate: str, mul: str) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate, self.mul = GATES[gate](), MULS[mul]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.mul(x, s)


class MobileBlock(nn.Module):
    """Stem conv -> BN -> act -> depthwise conv -> BN -> act -> SE -> 1x1 conv -> BN (+ the
    stem's output) -> 3x3 conv -> BN -> act2 -> a constant factor -> pool -> linear."""

    def __init__(self, act: str, act2: str, gate: str, mul: str, scale: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.act = ACTS[act]()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn_dw = nn.BatchNorm2d(16)
        self.act_dw = ACTS[act]()
        self.se = SqueezeExcite(16, 8, gate, mul)
        self.project = nn.Conv2d(16, 16, 1, bias=False)
        self.bn_p = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_c = nn.BatchNorm2d(16)
        self.act2 = ACTS[act2]()
        self.scale = SCALES[scale]
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        h = self.se(self.act_dw(self.bn_dw(self.dw(x))))
        h = self.bn_p(self.project(h)) + x
        h = self.scale(self.act2(self.bn_c(self.conv(h))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


CASES = [
    dict(act="hardswish", act2="hardswish_inplace", gate="hardsigmoid", mul="gate_first",
         scale="none", se="binary"),
    dict(act="hardswish_inplace", act2="F.hardswish", gate="F.hardsigmoid", mul="gate_second",
         scale="right", se="float"),
    dict(act="silu", act2="F.silu", gate="sigmoid", mul="torch.mul", scale="left",
         se="binary"),
    dict(act="F.silu", act2="gelu", gate="torch.sigmoid", mul="method", scale="none",
         se="float"),
    dict(act="gelu_tanh", act2="F.gelu_tanh", gate="F.sigmoid", mul="inplace", scale="right",
         se="binary"),
    dict(act="F.gelu", act2="silu", gate="method", mul="imul", scale="left",
         se="float"),
]  # fmt: skip
NEW_TYPES = (nn.Hardswish, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Hardsigmoid)


def test_every_spelling_is_in_some_case() -> None:
    for key, table in (("gate", GATES), ("mul", MULS), ("scale", SCALES)):
        assert {case[key] for case in CASES} == set(table), key
    assert {case[k] for case in CASES for k in ("act", "act2")} == set(ACTS)


@pytest.mark.parametrize("recipe", ["reactnet", "xnor"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_spelling_converts_trains_packs_and_matches(case: int, recipe: str) -> None:
    spec = dict(CASES[case])
    se_binary = spec.pop("se") == "binary"
    torch.manual_seed(case)
    model = MobileBlock(**spec)
    x = torch.randn(64, 3, 8, 8)
    y = torch.randint(0, 5, (64,))
    layers = {"binarize": ["se"]} if se_binary else {"keep_float": ["se"]}
    bnn = binarize.convert(model, recipe=recipe, example_inputs=(x[:2],), **layers)
    binary = {name for name, m in bnn.student.named_modules() if isinstance(m, BinaryConv2d)}
    assert binary == {"project", "conv"} | ({"se.fc1", "se.fc2"} if se_binary else set())
    binarize.finetune(bnn, (x, y), epochs=1, lr=1e-3, batch_size=32, progress=False)
    bnn.schedule.finalize(bnn)
    packed = runtime.load(binarize.pack(bnn, example_inputs=(x[:2],)))
    ops = {step.label for step in packed.plan}
    assert "mul" in ops and {"hardswish", "silu", "gelu"} & ops
    with torch.no_grad():
        expected = bnn.eval()(x).numpy()
    got = packed.predict(x.numpy())
    close = np.isclose(got, expected, rtol=1e-4, atol=1e-4).all(axis=1)
    # float32 rounding (here also exp/erf/tanh an ulp apart) can put a value on the other
    # side of a threshold now and then; the student's top-1 must still agree
    assert close.mean() >= 0.95, f"only {close.mean():.0%} of samples match"
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95


def test_the_activation_pass_leaves_these_activations_float() -> None:
    """Scope "all" swaps every ReLU-family activation for RPReLU; these are not of that
    family, so every one of them stays, as the same module type, where it was."""
    model = MobileBlock("hardswish", "gelu", "hardsigmoid", "gate_first", "none")
    before = sorted(type(m).__name__ for m in model.modules() if isinstance(m, NEW_TYPES))
    bnn = binarize.convert(
        model, recipe="reactnet", example_inputs=(torch.randn(2, 3, 8, 8),), activation_scope="all"
    )
    after = sorted(type(m).__name__ for m in bnn.modules() if isinstance(m, NEW_TYPES))
    assert after == before == ["GELU", "Hardsigmoid", "Hardswish", "Hardswish"]
    assert not any(type(m) is nn.ReLU for m in bnn.modules())  # the SE's ReLU was swapped


class SpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.attend = nn.Conv2d(8, 1, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = h * torch.sigmoid(self.attend(h))  # [N, 8, H, W] * [N, 1, H, W]
        return self.fc(h.mean((2, 3)))


def test_other_broadcasts_fail_at_convert_time_naming_the_node() -> None:
    with pytest.raises(binarize.ConversionError) as error:
        binarize.convert(SpatialGate(), recipe="xnor", example_inputs=(torch.randn(2, 3, 6, 6),))
    message = str(error.value)
    assert "node 'mul'" in message and "([2, 8, 6, 6] * [2, 1, 6, 6])" in message
    assert "per-channel gate [N, C, 1, 1]" in message
    assert "test_spellings_activations.py" in message  # the user's source line


class Products(nn.Module):
    """x * sigmoid(x) by hand (two tensors of one shape), then a flatten whose size is a
    product of sizes (shape arithmetic: the numbers multiply in Python)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = self.conv2(h * torch.sigmoid(h))
        return self.fc(h.view(h.size(0), h.size(1) * h.size(2) * h.size(3)))


def test_same_shape_products_and_size_arithmetic_pack() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3, 6, 6)
    bnn = binarize.convert(Products(), recipe="xnor", example_inputs=(x[:2],))
    bnn.schedule.finalize(bnn)
    packed = runtime.load(binarize.pack(bnn, example_inputs=(x[:2],)))
    assert [s.label for s in packed.plan][:3] == ["conv2d", "sigmoid", "mul"]
    with torch.no_grad():
        expected = bnn.eval()(x).numpy()
    close = np.isclose(packed.predict(x.numpy()), expected, rtol=1e-4, atol=1e-4).all(axis=1)
    assert close.mean() >= 0.9


class HugeFactor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv(x) * 1e39, 1), 1))


def test_a_factor_beyond_float32_is_refused() -> None:
    with pytest.raises(binarize.ConversionError, match=r"multiplication by 1e\+39.*finite factor"):
        binarize.convert(HugeFactor(), recipe="xnor", example_inputs=(torch.randn(2, 3, 6, 6),))


class InPlaceReread(nn.Module):
    """An in-place activation whose input is read again afterwards: torch reads the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Hardswish(inplace=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        a = self.act(h)
        b = F.silu(h, inplace=True)  # reads act's result, and overwrites it again
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(a + b + h, 1), 1))


def test_in_place_activations_keep_torchs_meaning() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5)
    model = InPlaceReread().eval()
    bnn = binarize.convert(model, recipe="xnor", example_inputs=(x[:2],))
    packed = runtime.load(binarize.pack(bnn, example_inputs=(x[:2],)))
    with torch.no_grad():
        expected = model(x).numpy()  # = fc(pool(3 * silu(hardswish(conv(x)))))
    np.testing.assert_allclose(packed.predict(x.numpy()), expected, rtol=1e-5, atol=1e-5)
