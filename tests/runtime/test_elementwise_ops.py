"""runtime/ops/elementwise.py: silu, hardswish, hardsigmoid, sigmoid, gelu and mul against
PyTorch's float32 CPU results, against the naive reference through a packed model, and the
declared shape rules and costs (the runtime never imports torch; these tests may)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rt_builder import IRBuilder
from rt_reference import run_reference

import runtime
from runtime import registry
from runtime.errors import InvalidModelError
from runtime.schema import ValueInfo

TORCH = {
    "silu": (F.silu, {}),
    "hardswish": (F.hardswish, {}),
    "hardsigmoid": (F.hardsigmoid, {}),
    "sigmoid": (torch.sigmoid, {}),
    "gelu": (F.gelu, {"approximate": "none"}),
    "gelu_tanh": (lambda t: F.gelu(t, approximate="tanh"), {"approximate": "tanh"}),
}
UNARY = ("silu", "hardswish", "hardsigmoid", "sigmoid", "gelu")


def _inputs(seed: int) -> np.ndarray:
    """NHWC float32: normal values, a wide uniform spread, values near 0 and the kinks
    (-3, 3 of the hard functions), and exp's overflow range."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.standard_normal(3000) * 3,
        rng.uniform(-120, 120, 2000),
        rng.standard_normal(500) * 1e-3,
        np.array([-3, 3, 0, -0.0, -88.5, -89, -104, 89, 1e4, -1e4, 3e38, -3e38]),
    ]
    flat = np.concatenate(parts).astype(np.float32)
    flat = np.concatenate([flat, np.zeros(-len(flat) % 60, np.float32)])
    return flat.reshape(-1, 3, 4, 5)


@pytest.mark.parametrize("case", sorted(TORCH))
def test_each_op_follows_torch_float32(case: str) -> None:
    function, attrs = TORCH[case]
    op = registry.get(case.split("_")[0])
    x = _inputs(seed=len(case))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp overflowing to inf is expected, not a warning
        got = op.run([x], {}, attrs)
    expected = function(torch.from_numpy(x)).numpy()
    assert got.dtype == np.float32 and got.shape == x.shape
    if case.startswith("hard"):  # no transcendental function: the same float32 steps
        np.testing.assert_array_equal(got, expected)
    else:  # exp / tanh / erf may differ from torch's by an ulp; GELU cancels near -5
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)


def test_limits_where_exp_overflows() -> None:
    x = np.array([[-1000.0, -100.0, 100.0, 1000.0]], np.float32)
    assert registry.get("sigmoid").run([x], {}, {}).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    silu = registry.get("silu").run([x], {}, {})
    assert silu[0, 0] == 0 and silu[0, 3] == 1000
    gelu = registry.get("gelu").run([x], {}, {"approximate": "tanh"})
    assert gelu.tolist() == [[0.0, 0.0, 100.0, 1000.0]]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_on_a_strided_view(approximate: str) -> None:
    x = _inputs(seed=5)
    view = x.transpose(0, 2, 1, 3)  # not contiguous
    got = registry.get("gelu").run([view], {}, {"approximate": approximate})
    expected = registry.get("gelu").run(
        [np.ascontiguousarray(view)], {}, {"approximate": approximate}
    )
    np.testing.assert_array_equal(got, expected)


def test_mul_follows_numpy_broadcasting_of_a_gate() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)  # NHWC
    gate = rng.standard_normal((2, 1, 1, 3)).astype(np.float32)
    got = registry.get("mul").run([x, gate], {}, {})
    for n in range(2):
        for c in range(3):
            np.testing.assert_array_equal(got[n, :, :, c], x[n, :, :, c] * gate[n, 0, 0, c])


def test_a_packed_model_with_every_op_matches_the_reference() -> None:
    b = IRBuilder(seed=4)
    x = b.input([6, 5, 7])
    h = b.unary("silu", b.conv2d(x, 8, kernel=3, padding=1))
    h = b.unary("hardswish", b.affine(h))
    gate = b.unary("hardsigmoid", b.conv2d(b.unary("global_avgpool", h), 8, kernel=1, padding=0))
    h = b.node("mul", [h, gate])
    h = b.unary("gelu", b.conv2d(h, 8, kernel=3, padding=1))
    flat = b.dense(b.unary("flatten", h), 10)
    same = b.node("mul", [flat, b.unary("sigmoid", flat)])
    b.output(b.unary("gelu", same, approximate="tanh"))
    graph, tensors = b.build()
    model = runtime.load(b.to_bytes())
    assert [s.label for s in model.plan][-4:] == ["dense", "sigmoid", "mul", "gelu"]
    x_in = np.random.default_rng(1).standard_normal((3, 6, 5, 7)).astype(np.float32)
    (expected,), _ = run_reference(graph, tensors, {"input": x_in})
    np.testing.assert_allclose(model.predict(x_in), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((8, 5, 5), (8, 5, 5)),
        ((8, 5, 5), (8, 1, 1)),
        ((8, 1, 1), (8, 1, 1)),
        ((12,), (12,)),
    ],
)
def test_mul_accepts_same_shapes_and_a_channel_gate(a: tuple, b: tuple) -> None:
    _, out, _ = registry.get("mul").check("m", {}, [ValueInfo("float", a), ValueInfo("float", b)])
    assert out == ValueInfo("float", a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((8, 5, 5), (1, 5, 5)),  # a spatial gate
        ((8, 1, 1), (8, 5, 5)),  # the gate must be the second input
        ((8, 5, 5), (8, 5, 1)),
        ((8, 5, 5), (4, 1, 1)),
        ((12,), (1,)),
        ((8, 1, 1), (8,)),
    ],
)
def test_mul_refuses_other_broadcasts(a: tuple, b: tuple) -> None:
    with pytest.raises(
        InvalidModelError, match=r"^m: inputs have shapes .*per-channel gate \[N, C, 1, 1\]"
    ):
        registry.get("mul").check("m", {}, [ValueInfo("float", a), ValueInfo("float", b)])


def test_mul_refuses_bits() -> None:
    with pytest.raises(InvalidModelError, match="input 1 must be float but is bits"):
        registry.get("mul").check(
            "m", {}, [ValueInfo("float", (8, 5, 5)), ValueInfo("bits", (8, 5, 5))]
        )


def test_gelu_takes_only_torchs_approximations() -> None:
    gelu = registry.get("gelu")
    attrs, _, _ = gelu.check("g", {}, [ValueInfo("float", (4, 2, 2))])
    assert attrs == {"approximate": "none"}
    with pytest.raises(InvalidModelError, match="'approximate' must be one of"):
        gelu.check("g", {"approximate": "erf"}, [ValueInfo("float", (4, 2, 2))])


@pytest.mark.parametrize("name", [*UNARY, "mul"])
def test_costs_one_visit_per_element_and_no_scratch(name: str) -> None:
    op = registry.get(name)
    ins = [ValueInfo("float", (8, 5, 5))] * op.inputs.count
    attrs, out, _ = op.check("n", {}, ins)
    assert op.fusion is None
    assert op.work(attrs, ins, out) == math.prod(out.shape) == 200
    assert op.scratch(attrs, ins, out) == 0
