"""passes.binarize_layers: selected layers become BinaryConv2d/BinaryLinear, weights kept."""

from __future__ import annotations

import pytest
import torch
from graph_models import MLP, TinyResNet, canonical, module_counts
from torch import fx, nn

from operators import BinaryConv2d, BinaryLinear, DySign, RSign, SignSTE
from operators.errors import ConversionError
from passes.base import module_of, run_passes
from passes.binarize_layers import BinarizeLayers, BinarizerOptions
from passes.select import LayerSelection, SelectLayers

x8 = torch.randn(2, 3, 8, 8)


def binarized(model: nn.Module, x: torch.Tensor, **options: object) -> fx.GraphModule:
    passes = [SelectLayers(), BinarizeLayers(BinarizerOptions(**options))]
    return run_passes(canonical(model, x), passes)


def test_selected_convs_become_binary_and_the_rest_stay() -> None:
    model = TinyResNet()
    gm = binarized(model, x8, kind="rsign", weight_scale="attached")
    counts = module_counts(gm)
    assert counts["BinaryConv2d"] == 4
    assert counts["Conv2d"] == 2 and counts["Linear"] == 1  # stem, downsample; classifier
    for name in ("layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2"):
        layer = gm.get_submodule(name)
        assert isinstance(layer, BinaryConv2d) and layer.weight_scale == "attached"
        assert isinstance(layer.input_binarizer, RSign)
        assert layer.input_binarizer.alpha.shape == (layer.in_channels,)
        assert torch.equal(layer.weight, model.get_submodule(name).weight)
        assert layer.stride == model.get_submodule(name).stride
    assert type(gm.get_submodule("conv1")) is nn.Conv2d


def test_binary_linear_gets_a_binarizer_for_its_features() -> None:
    gm = binarized(MLP(), torch.randn(4, 12), kind="dysign",
                   options={"reduction": 4, "min_hidden": 2})  # fmt: skip
    assert module_counts(gm) == {"Linear": 2, "BinaryLinear": 1, "ReLU": 2}
    layer = gm.get_submodule("fc2")
    assert isinstance(layer, BinaryLinear) and isinstance(layer.input_binarizer, DySign)
    assert layer.input_binarizer.fc1.out_features == 4  # 16 // 4
    assert gm(torch.randn(4, 12)).shape == (4, 3)


def test_nothing_selected_changes_nothing() -> None:
    gm = canonical(TinyResNet(), x8)
    gm = SelectLayers(LayerSelection(default=False))(gm).graph_module
    assert not BinarizeLayers()(gm).modified
    assert "BinaryConv2d" not in module_counts(gm)


def test_binary_layer_output_matches_formula() -> None:
    gm = binarized(TinyResNet().eval(), x8, kind="ste")
    layer = gm.get_submodule("layer1.conv1")
    assert isinstance(layer.input_binarizer, SignSTE)
    x = torch.randn(1, 8, 4, 4)
    alpha = layer.weight.abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    sign = lambda t: torch.where(t >= 0, 1.0, -1.0)  # noqa: E731
    expected = nn.functional.conv2d(sign(x), alpha * sign(layer.weight), None, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_bad_options_and_missing_selection_are_reported() -> None:
    with pytest.raises(ConversionError, match=r"BinarizerOptions\.kind 'sgn' is not one of"):
        BinarizerOptions(kind="sgn")
    with pytest.raises(ConversionError, match=r"BinarizerOptions\.weight_scale 'mean'"):
        BinarizerOptions(weight_scale="mean")
    with pytest.raises(ConversionError, match=r"fit 'dysign': \['depth'\] are not.*DySign accepts"):
        BinarizerOptions(kind="dysign", options={"depth": 2})
    with pytest.raises(ConversionError, match=r"'rsign' binarizer rejects them"):
        binarized(TinyResNet(), x8, kind="rsign", options={"backward": "sgn"})
    with pytest.raises(ConversionError, match="'select' pass must run before"):
        BinarizeLayers()(canonical(TinyResNet(), x8))


def test_layers_keep_the_training_flag() -> None:
    gm = binarized(TinyResNet().train(), x8)
    conv = next(n for n in gm.graph.nodes if isinstance(module_of(gm, n), BinaryConv2d))
    assert module_of(gm, conv).training
