"""passes.select: structural defaults, the layered overrides, and errors for bad requests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from graph_models import DepthwiseNet, TinyResNet, basic_block, bottleneck, canonical
from torch import fx, nn

from operators.errors import ConversionError
from passes.base import run_passes
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


# ---- squeeze-excitation branches and channels-last Linear layers ---------------------------

SE_SPELLINGS = {
    # torchvision's SqueezeExcitation: 1x1 convs, module pool, ReLU, Hardsigmoid, scale * x
    "torchvision": lambda se, x: se.gate(se.fc2(se.act(se.fc1(se.pool(x))))) * x,
    # timm's: keepdim mean, functional SiLU, sigmoid method; the product in place, trunk first
    "timm": lambda se, x: x.mul_(se.fc2(F.silu(se.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()),
    # the original SENet code: Linear layers on the flattened pool, view back, expand_as
    "linear": lambda se, x: (
        x
        * torch.sigmoid(se.lin2(se.act(se.lin1(se.pool(x).flatten(1)))))
        .view(x.size(0), -1, 1, 1)
        .expand_as(x)
    ),
}


class SENet(nn.Module):
    """conv -> (1x1 conv -> BN -> SE) -> conv -> head; ``spelling`` picks the SE's form."""

    def __init__(self, spelling: str, gate: nn.Module | None = None) -> None:
        super().__init__()
        self.spelling = SE_SPELLINGS[spelling]
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.lin1, self.lin2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.gate = gate or nn.Hardsigmoid()
        self.after = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(self.stem(x)))
        return self.head(self.after(self.spelling(self, x)))


def reasons(gm: fx.GraphModule) -> dict[str, str]:
    return {str(n.target): n.meta[META_KEY].reason for n in gm.graph.nodes if META_KEY in n.meta}


def selected(model: nn.Module, x: torch.Tensor = x8, **rules: object) -> fx.GraphModule:
    return SelectLayers(LayerSelection(**rules))(canonical(model, x)).graph_module


@pytest.mark.parametrize("spelling", sorted(SE_SPELLINGS))
def test_squeeze_excitation_layers_stay_float_in_every_spelling(spelling: str) -> None:
    gm = selected(SENet(spelling))
    layers = ("lin1", "lin2") if spelling == "linear" else ("fc1", "fc2")
    assert {name: reasons(gm)[name] for name in layers} == dict.fromkeys(
        layers, "squeeze-excitation branch"
    )
    assert decisions(gm)["conv"] and decisions(gm)["after"]  # the trunk stays binary


def test_squeeze_excitation_can_be_binarized_by_flag_name_regex_or_type() -> None:
    chosen = select(SENet("torchvision"), keep_squeeze_excitation=False)
    assert chosen["fc1"] and chosen["fc2"]
    chosen = select(SENet("torchvision"), binarize=("fc1",))
    assert chosen["fc1"] and not chosen["fc2"]
    assert reasons(selected(SENet("torchvision"), binarize=("fc[12]",)))["fc2"] == (
        "name matches 'fc[12]' in binarize"
    )
    assert select(SENet("linear"), binarize=(nn.Linear,))["lin1"]


class NotSE(nn.Module):
    """Pool -> 1x1 -> act -> 1x1 -> sigmoid, each time with one piece of the pattern wrong."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.other = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 4, 3 if case == "3x3" else 1, padding=1 if case == "3x3" else 0)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trunk = self.stem(x)
        pooled = F.adaptive_avg_pool2d(trunk, 1) if self.case != "max" else F.max_pool2d(trunk, 8)
        hidden = self.fc1(pooled)
        hidden = hidden if self.case == "no_activation" else torch.relu(hidden)
        gate = (
            torch.sigmoid(self.fc2(hidden)) if self.case != "tanh" else torch.tanh(self.fc2(hidden))
        )
        if self.case == "add":
            return self.head(trunk + gate)
        return self.head(gate * (self.other(x) if self.case == "other_trunk" else trunk))


@pytest.mark.parametrize("case", ["3x3", "max", "no_activation", "tanh", "other_trunk", "add"])
def test_near_misses_of_squeeze_excitation_are_not_kept_float(case: str) -> None:
    chosen = reasons(selected(NotSE(case)))
    assert chosen["fc1"] == chosen["fc2"] == "global default", chosen


def test_zoo_squeeze_excitation_layers_are_found() -> None:
    from binarize import models

    x = torch.randn(1, 3, 32, 32)
    for model in (
        models.mobilenet_v3_small(num_classes=4, width_mult=0.25),
        models.efficientnet_b0(num_classes=4, width_mult=0.25, depth_mult=0.25),
    ):
        why = reasons(selected(model, x))
        se = {name for name in why if name.endswith((".fc1", ".fc2"))}
        assert se and all(why[name] == "squeeze-excitation branch" for name in se)
        assert "squeeze-excitation branch" not in {why[n] for n in why if n not in se}


class ChannelsLast(nn.Module):
    """conv -> permute to [N, H, W, C] -> Linear -> permute back -> conv -> head, with H == C
    (so a binarizer sized for C would silently accept the [N, H, W, C] tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.flat = nn.Linear(8 * 8 * 8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(self.flat(self.conv(y).flatten(1)))


def test_a_channels_last_linear_stays_float_with_its_reason() -> None:
    why = reasons(selected(ChannelsLast()))
    assert why["mix"].startswith("Linear applied channels-last (input [N, 8, 8, 8]")
    assert why["flat"] == why["conv"] == "global default"  # [N, F] Linear layers still binary
    with pytest.raises(ConversionError, match=r"layer 'mix'.*channels-last"):
        select(ChannelsLast(), binarize=("mix",))
    assert select(ChannelsLast(), binarize=(r"m.x",))["mix"] is False


@pytest.mark.parametrize("recipe", ["reactnet", "xnor", "dybnn"])
def test_channels_last_models_convert_and_run_forward_and_backward(recipe: str) -> None:
    # before the layout rule the first forward raised a ValueError from the binarizer (or,
    # with H == C as in ChannelsLast, ran with each row thresholded by another channel's shift)
    from binarize import models, recipes
    from operators import BinaryConv2d
    from passes.trace import trace

    convnext = models.convnext(num_classes=3, width=8, depths=(1, 1, 1, 1))
    for model, x, channels_last in (
        (ChannelsLast(), x8, ["mix"]),
        (convnext, torch.randn(2, 3, 32, 32), [f"stages.{i}.0.pwconv{j}" for i in range(4)
                                               for j in (1, 2)]),
    ):  # fmt: skip
        student = run_passes(trace(model), recipes.get(recipe).build_passes((x,)))
        assert all(type(student.get_submodule(name)) is nn.Linear for name in channels_last)
        student(x).square().mean().backward()
    assert isinstance(student.get_submodule("downsample.0.1"), BinaryConv2d)
