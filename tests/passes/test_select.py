"""passes.select: structural defaults, the layered overrides, and errors for bad requests."""

from __future__ import annotations

import pytest
import torch
from graph_models import DepthwiseNet, TinyResNet, basic_block, bottleneck, canonical
from torch import fx, nn

from binarize.errors import ConversionError
from passes.select import META_KEY, LayerSelection, SelectLayers

x8 = torch.randn(1, 3, 8, 8)


def decisions(gm: fx.GraphModule) -> dict[str, bool]:
    return {str(n.target): n.meta[META_KEY].binary for n in gm.graph.nodes if META_KEY in n.meta}


def select(model: nn.Module, x: torch.Tensor = x8, **rules: object) -> dict[str, bool]:
    gm = canonical(model, x)
    return decisions(SelectLayers(LayerSelection(**rules))(gm).graph_module)


def test_resnet_defaults_keep_stem_classifier_and_downsample_float() -> None:
    assert select(TinyResNet()) == {
        "conv1": False,  # first layer
        "layer1.conv1": True,
        "layer1.conv2": True,
        "layer2.conv1": True,
        "layer2.conv2": True,
        "layer2.downsample.0": False,  # 1x1 projection shortcut
        "fc": False,  # last layer
    }


def test_bottleneck_last_1x1_is_binary_but_its_downsample_is_not() -> None:
    chosen = select(nn.Sequential(nn.Conv2d(3, 8, 3), bottleneck(8, 4), nn.Conv2d(16, 2, 1)))
    assert chosen["1.conv1"] and chosen["1.conv2"] and chosen["1.conv3"]
    assert not chosen["1.downsample.0"]
    assert not chosen["0"] and not chosen["2"]


def test_depthwise_convs_stay_float() -> None:
    chosen = select(DepthwiseNet(), torch.randn(1, 3, 8, 8))
    assert chosen == {"stem": False, "dw": False, "pw": True, "dw2": False, "fc": False}


def test_structural_rules_can_be_switched_off() -> None:
    chosen = select(TinyResNet(), keep_first=False, keep_last=False, keep_projections=False)
    assert all(chosen.values())


def test_levels_type_then_regex_then_exact_name() -> None:
    # type: every Conv2d float; regex: layer2 convs binary again; exact: layer2.conv2 float
    chosen = select(
        TinyResNet(),
        keep_float=(nn.Conv2d, "layer2.conv2"),
        binarize=(r"layer2\.conv.",),
    )
    assert chosen["layer1.conv1"] is False and chosen["layer1.conv2"] is False
    assert chosen["layer2.conv1"] is True
    assert chosen["layer2.conv2"] is False
    # a type entry overrides the structural default (the classifier becomes binary)
    assert select(TinyResNet(), binarize=(nn.Linear,))["fc"] is True
    # an exact name overrides the structural default too
    assert select(TinyResNet(), binarize=("layer2.downsample.0",))["layer2.downsample.0"] is True


def test_keep_float_wins_at_the_same_level() -> None:
    chosen = select(TinyResNet(), keep_float=(r"layer1\..*",), binarize=(r".*conv1",))
    assert chosen["layer1.conv1"] is False and chosen["layer2.conv1"] is True


def test_same_exact_name_in_both_lists_is_an_error() -> None:
    with pytest.raises(ConversionError, match="both keep_float and binarize"):
        select(TinyResNet(), keep_float=("layer1.conv1",), binarize=("layer1.conv1",))


def test_unknown_layer_kind_asked_by_name_or_type_is_an_error() -> None:
    class WithConv1d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.seq = nn.Conv1d(1, 1, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.seq(self.first(x).unsqueeze(1)).squeeze(1))

    x = torch.randn(2, 4)
    assert select(WithConv1d(), x)["seq"] is False  # unknown kinds simply stay float
    with pytest.raises(ConversionError, match=r"layer 'seq'.*Conv1d has no binary version"):
        select(WithConv1d(), x, binarize=("seq",))
    with pytest.raises(ConversionError, match=r"layer 'seq'.*type Conv1d"):
        select(WithConv1d(), x, binarize=(nn.Conv1d,))
    with pytest.raises(ConversionError, match=r"'bn1'.*BatchNorm2d has no binary version"):
        select(TinyResNet(), binarize=("bn1",))


def test_grouped_conv_asked_by_name_is_an_error() -> None:
    with pytest.raises(ConversionError, match=r"'dw'.*groups=8"):
        select(DepthwiseNet(), binarize=("dw",))


def test_a_name_that_matches_nothing_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(ConversionError, match=r"match no conv.*Did you mean 'layer1.conv1'"):
        select(TinyResNet(), keep_float=("layer1.conv_1",))


def test_shared_block_weights_get_one_decision_per_call() -> None:
    block = basic_block(3, 3)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.block, self.head = nn.Conv2d(3, 3, 1), block, nn.Conv2d(3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.block(self.stem(x))))

    gm = SelectLayers()(canonical(Twice(), x8)).graph_module
    calls = [n for n in gm.graph.nodes if n.target == "block.conv1"]
    assert len(calls) == 2 and all(n.meta[META_KEY].binary for n in calls)


def test_a_module_name_covers_the_layers_inside_and_the_longest_name_wins() -> None:
    chosen = select(TinyResNet(), keep_float=("layer2",))
    assert not chosen["layer2.conv1"] and not chosen["layer2.conv2"] and chosen["layer1.conv1"]
    chosen = select(TinyResNet(), binarize=("layer2",), keep_float=("layer2.conv2",))
    assert chosen["layer2.conv1"] and chosen["layer2.downsample.0"]
    assert not chosen["layer2.conv2"]
    with pytest.raises(ConversionError, match="'layer2' is listed in both"):
        select(TinyResNet(), binarize=("layer2",), keep_float=("layer2",))
