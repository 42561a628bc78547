"""passes.canonicalize: every activation spelling becomes one inplace=False module per site."""

from __future__ import annotations

import operator
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from graph_models import basic_block, canonical, module_counts, op_counts
from hypothesis import given, settings
from hypothesis import strategies as st
from model_state import randomize_batchnorm
from torch import nn

from passes.base import module_of

x4 = torch.randn(2, 3, 5, 5)


class Apply(nn.Module):
    """Wraps one activation spelling: ``forward(x) = fn(x) + x`` (the input is read after)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0
        y = self.fn(x)
        return y + x


SPELLINGS: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], nn.Module]] = [
    ("F.relu", lambda x: F.relu(x), nn.ReLU()),
    ("F.relu inplace", lambda x: F.relu(x, inplace=True), nn.ReLU()),
    ("torch.relu", lambda x: torch.relu(x), nn.ReLU()),
    ("torch.relu_", lambda x: torch.relu_(x), nn.ReLU()),
    ("x.relu()", lambda x: x.relu(), nn.ReLU()),
    ("x.relu_()", lambda x: x.relu_(), nn.ReLU()),
    ("F.relu6", lambda x: F.relu6(x), nn.ReLU6()),
    ("F.relu6 inplace", lambda x: F.relu6(x, True), nn.ReLU6()),
    ("F.hardtanh", lambda x: F.hardtanh(x, -0.5, 2.0), nn.Hardtanh(-0.5, 2.0)),
    ("F.hardtanh_", lambda x: F.hardtanh_(x), nn.Hardtanh()),
    ("F.leaky_relu", lambda x: F.leaky_relu(x, 0.2), nn.LeakyReLU(0.2)),
    ("F.leaky_relu inplace", lambda x: F.leaky_relu(x, inplace=True), nn.LeakyReLU(0.01)),
    ("torch.clamp relu6", lambda x: torch.clamp(x, 0, 6), nn.ReLU6()),
    ("torch.clamp relu", lambda x: torch.clamp(x, min=0), nn.ReLU()),
    ("x.clamp hardtanh", lambda x: x.clamp(-1.0, 1.0), nn.Hardtanh()),
    ("x.clamp_ relu", lambda x: x.clamp_(min=0), nn.ReLU()),
    ("x.clip relu6", lambda x: x.clip(0, 6), nn.ReLU6()),
]


def _without_function_activations(gm: torch.fx.GraphModule) -> bool:
    names = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
             "clamp", "clamp_", "clip", "clip_"}  # fmt: skip
    return not any(getattr(target, "__name__", target) in names for _, target in op_counts(gm))


@pytest.mark.parametrize(("label", "fn", "expected"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_every_spelling_becomes_one_module(
    label: str, fn: Callable[[torch.Tensor], torch.Tensor], expected: nn.Module
) -> None:
    model = Apply(fn)
    gm = canonical(model, x4)
    (node,) = [node for node in gm.graph.nodes if node.op == "call_module"]
    module = module_of(gm, node)
    assert type(module) is type(expected)
    assert getattr(module, "inplace", False) is False
    for attribute in ("min_val", "max_val", "negative_slope"):
        assert getattr(module, attribute, None) == getattr(expected, attribute, None)
    assert _without_function_activations(gm)
    # in-place forms: the later read of x sees the activated value, exactly as in eager mode
    assert torch.equal(gm(x4), model(x4.clone()))


def test_clamp_with_one_nonzero_bound_or_tensor_bound_stays() -> None:
    gm = canonical(Apply(lambda x: x.clamp(min=0.5) + torch.clamp(x, x.mean())), x4)
    assert module_counts(gm) == {}
    assert op_counts(gm)[("call_method", "clamp")] == 1
    assert op_counts(gm)[("call_function", torch.clamp)] == 1


def test_shared_relu_gets_one_module_per_call_site() -> None:
    block = randomize_batchnorm(basic_block(4, 4)).eval()
    x = torch.randn(2, 4, 6, 6)
    gm = canonical(block, x)
    relus = [node for node in gm.graph.nodes if isinstance(module_of(gm, node), nn.ReLU)]
    assert [str(node.target) for node in relus] == ["relu", "relu_1"]
    assert module_of(gm, relus[0]) is not module_of(gm, relus[1])
    assert module_of(gm, relus[0]) is not block.relu  # the source model is not shared
    assert block.relu.inplace is True
    assert torch.equal(gm(x), block(x.clone()))


def test_inplace_arithmetic_becomes_out_of_place() -> None:
    class Model(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = x * 2.0
            x.add_(y)
            z = x.mul_(3.0)
            return x + z

    model = Model()
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    gm = canonical(model, x, y)
    counts = op_counts(gm)
    assert counts[("call_method", "add_")] == 0 and counts[("call_method", "mul_")] == 0
    assert counts[("call_method", "add")] == 1 and counts[("call_method", "mul")] == 1
    assert torch.equal(gm(x, y), model(x, y))


def test_shapes_are_recorded_on_every_value() -> None:
    block = basic_block(4, 8, stride=2).eval()
    gm = canonical(block, torch.randn(2, 4, 6, 6))
    for node in gm.graph.nodes:
        if node.op != "output":
            assert "tensor_meta" in node.meta, node.name
    (add,) = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert tuple(add.meta["tensor_meta"].shape) == (2, 8, 3, 3)


class Chain(nn.Module):
    """A random chain of activation spellings between 1x1 convs (some read twice)."""

    def __init__(self, picks: list[int]) -> None:
        super().__init__()
        self.picks = picks
        self.convs = nn.ModuleList(nn.Conv2d(3, 3, 1) for _ in picks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, pick in zip(self.convs, self.picks):
            x = conv(x)
            y = SPELLINGS[pick][1](x)
            x = x + y if pick % 2 else y
        return x


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, len(SPELLINGS) - 1), min_size=1, max_size=5))
def test_random_chains_keep_their_output(picks: list[int]) -> None:
    model = Chain(picks).eval()
    gm = canonical(model, x4)
    assert _without_function_activations(gm)
    assert sum(module_counts(gm).values()) == 2 * len(picks)  # a conv and an activation each
    assert torch.equal(gm(x4), model(x4.clone()))
