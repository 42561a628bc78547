"""binarize.convert on every model of the zoo with every recipe.

Each case checks the structure (binary layers, float layers kept, which activations remain,
shortcuts added), that a forward and a backward pass run with gradients reaching every
binary layer's latent weights, and, with binarization switched off, that the rewrite alone
leaves the float model's output unchanged.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from model_state import randomize_batchnorm
from torch import nn

from binarize import models, recipes
from binarize.convert import BinaryModel, convert
from operators import BinaryConv2d, BinaryLinear, RPReLU, set_binarization

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Case:
    """A zoo model, its input, and what conversion must produce (counted by hand)."""

    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    binary: int  # BinaryConv2d + BinaryLinear
    kept_float: frozenset[str]  # conv/linear layers that stay float
    activations: int  # ReLU-family call sites, all next to a binary layer except `outside`
    outside: int  # sites between float layers only (kept by scope "binary")
    xnor_kept: int  # sites kept by xnor (scope "inputs": only those feeding binary layers go)
    shortcuts: int  # Bi-Real shortcuts added (binary convs whose shape allows)
    pooled: int  # ... of which through AvgPool2d(2)
    residual_adds: int  # adds of the float model itself


def _downsamples(stages: int) -> set[str]:
    return {f"layer{i}.0.downsample.0" for i in range(2, stages + 1)}


CASES = {
    # 20 convs: stem and 3 downsamples stay float. 17 ReLU sites (stem + 2 per block); the
    # last block's output ReLU feeds only the classifier. Shortcuts: 8 conv2 + 5 conv1 whose
    # block keeps the shape.
    "resnet18": Case(lambda: models.resnet18(num_classes=10), (2, 3, 64, 64), 16,
                     frozenset({"conv1", "fc"} | _downsamples(4)), 17, 0, 1, 13, 0, 8),
    "resnet34": Case(lambda: models.resnet34(num_classes=10), (1, 3, 32, 32), 32,
                     frozenset({"conv1", "fc"} | _downsamples(4)), 33, 0, 1, 29, 0, 16),
    # 53 convs; every 3x3 conv2 keeps its channels (3 of them stride 2: pooled shortcut),
    # layer1.0.conv1 maps 64 -> 64; the other 1x1s change the channel count.
    "resnet50": Case(lambda: models.resnet50(num_classes=10), (1, 3, 32, 32), 48,
                     frozenset({"conv1", "fc", "layer1.0.downsample.0"} | _downsamples(4)),
                     49, 0, 1, 17, 3, 16),
    # 13 pointwise convs binary, 13 depthwise float; the stem's ReLU6 sits between the float
    # stem and the float first depthwise conv. xnor drops only the ReLU6 before each pointwise.
    # The 8 pointwise convs that keep their channel count get a shortcut.
    "mobilenet_v1": Case(lambda: models.mobilenet_v1(num_classes=10, width_mult=0.25),
                         (2, 3, 32, 32), 13,
                         frozenset({"stem.0", "classifier"}
                                   | {f"features.{i}.depthwise" for i in range(13)}),
                         27, 1, 14, 8, 0, 0),
    # F.relu(inplace=True), torch.relu, x.relu(): conv2 and conv3 binary, 2 shortcuts
    # (conv2 16 -> 32 channels gets none).
    "small_cnn": Case(lambda: models.SmallCNN(), (2, 1, 16, 16), 2,
                      frozenset({"conv1", "fc"}), 3, 0, 1, 1, 0, 0),
    "mlp": Case(lambda: models.MLP(in_features=64, hidden=(32, 32)), (2, 1, 8, 8), 1,
                frozenset({"fc1", "head"}), 2, 0, 1, 0, 0, 0),
}  # fmt: skip


def _counts(bnn: BinaryModel) -> Counter[str]:
    gm = bnn.student
    return Counter(
        type(gm.get_submodule(str(n.target))).__name__
        for n in gm.graph.nodes
        if n.op == "call_module"
    )


def _adds(bnn: BinaryModel) -> int:
    return sum(
        1 for n in bnn.student.graph.nodes if n.op == "call_function" and n.target is operator.add
    )


_RELU_FAMILY = ("ReLU", "ReLU6", "LeakyReLU", "Hardtanh")
_REPLACEMENT = {"prelu": "PReLU", "rprelu": "RPReLU", "dyprelu": "DyPReLU"}


@pytest.mark.parametrize("recipe", recipes.names())
@pytest.mark.parametrize("model_name", list(CASES))
def test_convert_structure_and_gradients(model_name: str, recipe: str) -> None:
    case = CASES[model_name]
    torch.manual_seed(0)
    model = case.make()
    x = torch.randn(case.shape)
    bnn = convert(model, recipe, (x,))
    counts = _counts(bnn)
    chosen = bnn.recipe

    assert counts["BinaryConv2d"] + counts["BinaryLinear"] == case.binary
    float_layers = {
        str(n.target)
        for n in bnn.student.graph.nodes
        if n.op == "call_module"
        and type(bnn.student.get_submodule(str(n.target))) in (nn.Conv2d, nn.Linear)
    }
    assert float_layers == case.kept_float

    relus = sum(counts[name] for name in _RELU_FAMILY)
    if chosen.activation == "identity":
        expected = case.xnor_kept if chosen.activation_scope == "inputs" else case.outside
        assert relus == expected
    else:
        assert relus == case.outside
        assert counts[_REPLACEMENT[chosen.activation]] == case.activations - case.outside

    assert _adds(bnn) - case.residual_adds == (case.shortcuts if chosen.shortcuts else 0)
    assert counts["AvgPool2d"] == (case.pooled if chosen.shortcuts else 0)

    if model_name in ("resnet34", "resnet50") and recipe != "dybnn":
        return  # keep the suite fast: one backward per big ResNet
    bnn.train()
    batch = torch.randn(2, *case.shape[1:])  # two samples: BatchNorm trains at 1x1 in layer4
    bnn(batch).square().mean().backward()
    for layer in bnn.modules():
        if isinstance(layer, (BinaryConv2d, BinaryLinear)):
            assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    for name, parameter in bnn.named_parameters():
        assert parameter.grad is not None, name


def _relu_equivalent(recipe: str, model_name: str) -> dict[str, object]:
    """Overrides under which the converted graph must equal the float model exactly.

    * ``shortcuts=False``: a shortcut adds a term the float model does not have;
    * ``activation_init=0.0``: PReLU / RPReLU (zero shifts) / DyPReLU (zero-initialised
      hyper head) with slope 0 are exactly ReLU; the identity recipes (xnor, bireal) drop
      ReLUs, so they get ``activation="prelu"`` instead;
    * MobileNet's ReLU6 clips at 6, which no PReLU-family unit does: it keeps its activations
      (``activation=None``), so only the layer rewrite is checked there.
    """
    overrides: dict[str, object] = {"shortcuts": False, "activation_init": 0.0}
    if recipes.get(recipe).activation == "identity":
        overrides["activation"] = "prelu"
    if model_name == "mobilenet_v1":
        overrides["activation"] = None
    return overrides


@pytest.mark.parametrize("recipe", recipes.names())
@pytest.mark.parametrize("model_name", ["resnet18", "mobilenet_v1", "small_cnn", "mlp"])
def test_rewrite_alone_reproduces_the_float_model(model_name: str, recipe: str) -> None:
    case = CASES[model_name]
    torch.manual_seed(1)
    model = case.make()
    randomize_batchnorm(model, seed=2)
    model.eval()
    x = torch.randn(case.shape)
    bnn = convert(model, recipe, (x,), **_relu_equivalent(recipe, model_name))
    set_binarization(bnn, activations=False, weights=False)
    bnn.eval()
    with torch.no_grad():
        assert torch.equal(bnn(x), model(x))
        set_binarization(bnn, activations=True)
        assert not torch.equal(bnn(x), model(x))  # the check can fail: binarizers matter


def test_hourglass_converts_with_every_recipe_and_trains() -> None:
    torch.manual_seed(0)
    model = models.hourglass(num_stacks=2, depth=2, width=16, num_joints=4)
    x = torch.randn(2, 3, 32, 32)
    for recipe in recipes.names():
        bnn = convert(model, recipe, (x,))
        counts = _counts(bnn)
        # heads (write the output) stay float, and the stem conv; the 1x1 merge convs read
        # a fork and feed an add: kept as projections
        kept = {str(n.target) for n in bnn.student.graph.nodes if n.op == "call_module"
                and type(bnn.student.get_submodule(str(n.target))) is nn.Conv2d}  # fmt: skip
        assert kept == {"stem.0", "heads.0", "heads.1", "merge_features.0", "merge_heatmaps.0"}
        assert counts["BinaryConv2d"] > 20
        if bnn.recipe.activation not in (None, "identity"):
            assert not any(counts[name] for name in _RELU_FAMILY)
    bnn.train()
    bnn(x).square().mean().backward()
    assert all(p.grad is not None for p in bnn.parameters())
    randomize_batchnorm(model, seed=2)
    model.eval()
    same = convert(model, "dybnn", (x,), **_relu_equivalent("dybnn", "hourglass"))
    set_binarization(same, activations=False, weights=False)
    with torch.no_grad():
        assert torch.equal(same.eval()(x), model(x))


def test_replacement_activations_have_the_channels_of_their_site() -> None:
    bnn = convert(models.resnet18(num_classes=10), "reactnet", (torch.randn(2, 3, 64, 64),))
    assert bnn.student.get_submodule("layer1.0.relu").beta.shape == (64,)
    assert bnn.student.get_submodule("layer4.1.relu_1").beta.shape == (512,)
    assert isinstance(bnn.student.get_submodule("layer4.1.relu_1"), RPReLU)
