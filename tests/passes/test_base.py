"""passes.base: the pipeline runner and the graph helpers the passes share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from graph_models import TinyResNet
from torch import fx, nn

from operators.errors import ConversionError
from passes.base import PassResult, consumers, producers, run_passes, unique_target, walk
from passes.select import is_weight_node
from passes.trace import trace


@dataclass
class DropFc:
    """Replace the classifier call by its input (leaves ``fc`` unused)."""

    name: str = "drop_fc"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        (node,) = [n for n in gm.graph.nodes if n.target == "fc"]
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        return PassResult(gm, True)


@dataclass
class Misorder:
    """Make the first call read a value defined after it (an invalid graph)."""

    name: str = "misorder"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        calls = [n for n in gm.graph.nodes if n.op == "call_module"]
        calls[0].args = (calls[-1],)
        return PassResult(gm, True)


def test_run_passes_recompiles_and_drops_unused_submodules() -> None:
    model = TinyResNet().eval()
    gm = run_passes(trace(model), [DropFc()])
    assert not hasattr(gm, "fc")
    assert "fc" not in gm.code
    # the recompiled forward returns the classifier's input: the pooled, flattened features
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        features = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x)))))
        out = gm(x)
    assert out.shape == (1, 16)
    torch.testing.assert_close(out, torch.flatten(model.pool(features), 1))


def test_run_passes_names_the_pass_that_broke_the_graph() -> None:
    with pytest.raises(ConversionError, match="pass 'misorder' left an invalid graph"):
        run_passes(trace(TinyResNet()), [Misorder()])


def test_unique_target_skips_existing_paths() -> None:
    gm = trace(TinyResNet())
    assert unique_target(gm, "layer1.relu") == "layer1.relu_1"
    assert unique_target(gm, "layer1.prelu") == "layer1.prelu"
    gm.add_submodule("layer1.relu_1", nn.ReLU())
    assert unique_target(gm, "layer1.relu") == "layer1.relu_2"


def test_walk_finds_the_nearest_weight_layers() -> None:
    gm = trace(TinyResNet())
    nodes = {n.name: n for n in gm.graph.nodes}
    stop = lambda node: is_weight_node(gm, node)  # noqa: E731
    # the stem ReLU feeds layer1's first conv and, through the residual add, layer2's convs
    found = {n.target for n in walk(nodes["relu"], consumers, stop)}
    assert found == {"layer1.conv1", "layer2.conv1", "layer2.downsample.0"}
    assert {n.target for n in walk(nodes["relu"], producers, stop)} == {"conv1"}
