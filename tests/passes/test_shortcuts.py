"""passes.shortcuts: one Bi-Real shortcut per binary conv, where the add goes, and when not."""

from __future__ import annotations

import operator

import pytest
import torch
from graph_models import TinyResNet, basic_block, canonical, module_counts
from hypothesis import given, settings
from hypothesis import strategies as st
from model_state import randomize_batchnorm
from torch import fx, nn

from binarize.models import hourglass
from operators import set_binarization
from passes.activations import ActivationOptions, SwapActivations
from passes.base import module_of, run_passes
from passes.binarize_layers import BinarizeLayers
from passes.select import LayerSelection, SelectLayers
from passes.shortcuts import AddShortcuts

x8 = torch.randn(2, 3, 8, 8)


def with_shortcuts(model: nn.Module, x: torch.Tensor = x8, **rules: object) -> fx.GraphModule:
    passes = [SelectLayers(LayerSelection(**rules)), BinarizeLayers(),
              SwapActivations(ActivationOptions("rprelu")), AddShortcuts()]  # fmt: skip
    return run_passes(canonical(model, x), passes)


def adds(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add]


def test_resnet_gets_one_shortcut_per_binary_conv_that_keeps_its_shape() -> None:
    gm = with_shortcuts(TinyResNet())
    # 2 residual adds of the model + layer1.conv1, layer1.conv2, layer2.conv2 (layer2.conv1
    # goes 8 -> 16 channels: no shortcut)
    assert len(adds(gm)) == 5
    assert "AvgPool2d" not in module_counts(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    # the add sits between the BN and the activation, and reads the conv's input
    bn = nodes["layer1_bn1"]
    (add,) = bn.users
    assert add.target is operator.add and add.args == (bn, nodes["layer1_conv1"].args[0])
    (act,) = add.users
    assert type(module_of(gm, act)).__name__ == "RPReLU"


def test_stride_two_with_equal_channels_pools_the_shortcut() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 2, 1))  # fmt: skip
    gm = with_shortcuts(model)
    assert module_counts(gm)["AvgPool2d"] == 1
    (pool,) = [n for n in gm.graph.nodes if isinstance(module_of(gm, n), nn.AvgPool2d)]
    assert pool.target == "2_shortcut_pool" and pool.args[0].target == "1"
    (add,) = adds(gm)
    assert add.args[0].target == "3" and add.args[1] is pool
    assert gm(x8).shape == (2, 2, 4, 4)


def test_no_shortcut_without_binary_convs_and_idempotent() -> None:
    gm = with_shortcuts(TinyResNet(), default=False)
    assert len(adds(gm)) == 2
    gm = with_shortcuts(TinyResNet())
    again = run_passes(gm, [AddShortcuts()])
    assert len(adds(again)) == 5


def test_shortcut_adds_exactly_the_conv_input() -> None:
    block = randomize_batchnorm(basic_block(4, 4)).eval()
    x = torch.randn(2, 4, 5, 5)
    gm = run_passes(canonical(block, x), [SelectLayers(LayerSelection(keep_first=False,
                    keep_last=False)), BinarizeLayers()])  # fmt: skip
    set_binarization(gm, activations=False, weights=False)
    assert torch.equal(gm(x), block(x))
    gm = run_passes(gm, [AddShortcuts()])
    # conv2's input h = relu(bn1(conv1(x)) + x); block output = relu(bn2(conv2 h) + h + x)
    h = torch.relu(block.bn1(block.conv1(x)) + x)
    expected = torch.relu(block.bn2(block.conv2(h)) + h + x)
    torch.testing.assert_close(gm(x), expected)


@settings(max_examples=15, deadline=None)
@given(cin=st.sampled_from([2, 4]), cout=st.sampled_from([2, 4]), stride=st.sampled_from([1, 2]),
       norm=st.booleans(), size=st.sampled_from([4, 5]))  # fmt: skip
def test_shortcut_iff_shapes_allow_and_value_is_exact(
    cin: int, cout: int, stride: int, norm: bool, size: int
) -> None:
    middle = [nn.Conv2d(cin, cout, 3, stride, 1, bias=not norm)]
    if norm:
        middle.append(nn.BatchNorm2d(cout))
    model = randomize_batchnorm(
        nn.Sequential(nn.Conv2d(2, cin, 1), *middle, nn.Conv2d(cout, 1, 1))
    ).eval()
    x = torch.randn(2, 2, size, size)
    gm = with_shortcuts(model, x, keep_last=False)  # a binary last conv reads the sum
    set_binarization(gm, activations=False, weights=False)
    pooled = stride == 2 and size % 2 == 0
    expected_adds = int(cin == cout and (stride == 1 or pooled))
    assert len(adds(gm)) == expected_adds
    h = model[0](x)
    body = model[1:-1](h)
    if expected_adds:
        body = body + (nn.functional.avg_pool2d(h, 2) if stride == 2 else h)
    torch.testing.assert_close(gm(x), model[-1](body))


def _head_model(between: list[nn.Module], source: list[nn.Module] | None = None) -> nn.Module:
    """1x1 float stem (its raw output is the shortcut's source, or that output through
    `source`), a binary 3x3 conv + BN, `between`, a float 1x1 head."""
    return nn.Sequential(nn.Conv2d(3, 4, 1), *(source or []), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4), *between, nn.Conv2d(4, 2, 1))  # fmt: skip


@pytest.mark.parametrize(
    ("between", "expected_adds"),
    [
        ([], 0),  # BN -> float head: the sum would change the head's input scale
        ([nn.ReLU()], 0),  # through the activation (swapped to RPReLU) to the head
        ([nn.ReLU(), nn.MaxPool2d(1)], 0),  # pooling keeps the scale too
        ([nn.ReLU(), nn.BatchNorm2d(4)], 1),  # renormalised before the head: shortcut
        ([nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)], 1),  # binary reader
    ],
)
def test_no_shortcut_whose_sum_reaches_a_real_valued_layer(
    between: list[nn.Module], expected_adds: int
) -> None:
    gm = with_shortcuts(_head_model(between))
    assert len(adds(gm)) == expected_adds


@pytest.mark.parametrize("between", [[], [nn.ReLU()]])
@pytest.mark.parametrize("source", [[nn.BatchNorm2d(4)], [nn.BatchNorm2d(4), nn.ReLU()]])
def test_a_normalized_source_keeps_its_shortcut_before_a_real_valued_layer(
    between: list[nn.Module], source: list[nn.Module]
) -> None:
    """x = bn(..) or act(bn(..)) has the scale of the BN output it joins (Bi-Real's blocks,
    MobileNet's pointwise convs before a float depthwise conv)."""
    gm = with_shortcuts(_head_model(between, source))
    assert len(adds(gm)) == 1


def test_no_shortcut_whose_sum_is_the_model_output() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    assert len(adds(with_shortcuts(model, keep_last=False))) == 0
    model.append(nn.BatchNorm2d(4))  # a BN reader in between: the add is allowed again
    assert len(adds(with_shortcuts(model, keep_last=False))) == 1


def test_hourglass_heads_read_the_bn_output_without_a_shortcut() -> None:
    """The regression the rule was made for: the features before each head are
    act(bn(conv1x1(stream))) with no shortcut from the residual stream."""
    model = hourglass(2, 4, depth=1, width=8, block="hierarchical", outputs="list")
    gm = with_shortcuts(model, torch.randn(2, 3, 16, 16))
    for stack in range(2):
        (head,) = [n for n in gm.graph.nodes if n.target == f"heads.{stack}"]
        act = head.args[0]
        assert type(module_of(gm, act)).__name__ == "RPReLU"
        assert module_of(gm, act.args[0]) is gm.get_submodule(f"features.{stack}.2")
