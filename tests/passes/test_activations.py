"""passes.activations: which activations are swapped, for what, with which channel count."""

from __future__ import annotations

import pytest
import torch
from graph_models import MLP, DepthwiseNet, TinyResNet, canonical, module_counts
from torch import fx, nn

from operators import DyPReLU, RPReLU
from operators.errors import ConversionError
from passes.activations import ActivationOptions, SwapActivations
from passes.base import module_of, run_passes
from passes.binarize_layers import BinarizeLayers
from passes.select import SelectLayers

x8 = torch.randn(2, 3, 8, 8)


def swapped(model: nn.Module, x: torch.Tensor = x8, **options: object) -> fx.GraphModule:
    passes = [SelectLayers(), BinarizeLayers(), SwapActivations(ActivationOptions(**options))]
    return run_passes(canonical(model, x), passes)


def activation_types(gm: fx.GraphModule) -> dict[str, str]:
    return {
        str(n.target): type(module_of(gm, n)).__name__
        for n in gm.graph.nodes
        if n.op == "call_module" and "relu" in str(n.target)
    }


def test_resnet_every_relu_touches_the_binary_part() -> None:
    gm = swapped(TinyResNet(), kind="rprelu")
    assert module_counts(gm)["RPReLU"] == 5 and "ReLU" not in module_counts(gm)
    # per-site modules with the channel count of their input
    assert gm.get_submodule("layer1.relu").beta.shape == (8,)
    assert gm.get_submodule("layer2.relu_1").beta.shape == (16,)
    assert gm.get_submodule("layer2.relu") is not gm.get_submodule("layer2.relu_1")


def test_activations_between_float_layers_are_kept() -> None:
    # stem -> relu6 -> dw -> relu6 -> pw (binary) -> relu6 -> dw2 -> relu6 -> fc
    gm = swapped(DepthwiseNet(), kind="prelu", init=0.1)
    types = list(activation_types(gm).values())
    assert types == ["ReLU6", "PReLU", "PReLU", "ReLU6"]
    prelus = [m for m in gm.modules() if isinstance(m, nn.PReLU)]
    assert all(torch.all(m.weight == 0.1) for m in prelus)


def test_scopes_inputs_binary_all() -> None:
    # MLP: fc1 (float) -> relu -> fc2 (binary) -> relu -> fc3 (float)
    x = torch.randn(3, 12)
    assert module_counts(swapped(MLP(), x, scope="inputs"))["PReLU"] == 1
    assert module_counts(swapped(MLP(), x, scope="binary"))["PReLU"] == 2
    assert module_counts(swapped(DepthwiseNet(), scope="all"))["PReLU"] == 4


def test_identity_removes_the_activation() -> None:
    gm = swapped(MLP(), torch.randn(3, 12), kind="identity", scope="inputs")
    assert module_counts(gm) == {"Linear": 2, "BinaryLinear": 1, "ReLU": 1}
    fc2 = next(n for n in gm.graph.nodes if n.target == "fc2")
    assert fc2.args[0].target == "fc1"


def test_dyprelu_options_and_relu_equivalence_at_init_zero() -> None:
    gm = swapped(TinyResNet().eval(), kind="dyprelu", init=0.0,
                 options={"reduction": 2, "min_hidden": 2})  # fmt: skip
    layer = gm.get_submodule("layer1.relu")
    assert isinstance(layer, DyPReLU) and layer.fc1.out_features == 4
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(layer(x), torch.relu(x))
    rprelu = RPReLU(8, init=0.0)
    assert torch.equal(rprelu(x), torch.relu(x))


def test_bad_options_are_reported_by_the_option_class() -> None:
    with pytest.raises(ConversionError, match=r"ActivationOptions\.kind 'gelu' is not one of"):
        ActivationOptions(kind="gelu")
    with pytest.raises(ConversionError, match=r"ActivationOptions\.scope 'some' is not one of"):
        ActivationOptions(scope="some")
    with pytest.raises(ConversionError, match=r"ActivationOptions\.init must be a number"):
        ActivationOptions(init="0.25")
    with pytest.raises(ConversionError, match=r"ActivationOptions\.options.*RPReLU takes none"):
        ActivationOptions(kind="rprelu", options={"reduction": 4})
    with pytest.raises(ConversionError, match=r"do not fit .identity.*it takes none"):
        ActivationOptions(kind="identity", options={"reduction": 4})
    with pytest.raises(ConversionError, match="leave this pass out"):
        SwapActivations(ActivationOptions(kind=None))
