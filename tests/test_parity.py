"""The packed runtime against the PyTorch student it was packed from.

For every recipe and every model definition of the project, on random inputs:

* every binary layer's integer result is exactly equal when both sides binarize the same
  float input (the layer is packed alone with ``weight_scale="none"`` and no bias, so the
  runtime returns the raw popcount sums, and PyTorch computes ``conv(sign(x), sign(W))``);
* the whole network's output is ``allclose`` to the student's eval output.

End-to-end tolerance: float32 runs the float parts in a different order (NHWC, folded
BatchNorm), so values differ by a few ulps; and where a value lands within that rounding of a
binarizer threshold, its bit can flip (the packer folds thresholds in exact arithmetic,
PyTorch compares float32 values). The top-1 agreement test measures how often that matters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.fx as fx
from torch import nn

import binarize
import runtime
from binarize import models, recipes
from binarize.nn import Binarizer, BinaryConv2d, BinaryLinear, DyPReLU, RPReLU, RSign

# (model name, constructor kwargs, input shape): small inputs keep the suite fast.
MODELS = [
    ("resnet18", {"num_classes": 10}, (2, 3, 64, 64)),
    ("resnet34", {"num_classes": 10}, (1, 3, 32, 32)),
    ("resnet50", {"num_classes": 10}, (1, 3, 32, 32)),
    ("mobilenet_v1", {"num_classes": 10, "width_mult": 0.25}, (2, 3, 32, 32)),
    ("hourglass", {"num_stacks": 2, "num_joints": 4, "depth": 2, "width": 16}, (2, 3, 32, 32)),
    ("resnet_small", {"num_classes": 10, "width": 16}, (2, 1, 28, 28)),
    ("small_cnn", {}, (2, 1, 28, 28)),
    ("mlp", {}, (2, 1, 28, 28)),
]
RECIPES = ["xnor", "bireal", "bulat", "reactnet", "dybnn"]


def randomize(model: nn.Module, seed: int = 0) -> None:
    """Give every statistic and learned shift a non-trivial value, as training would."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen) * (high - low) + low

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(rand(mod.running_mean, -0.3, 0.3))
                mod.running_var.copy_(rand(mod.running_var, 0.5, 2.0))
                mod.weight.copy_(rand(mod.weight, -1.5, 1.5))
                mod.bias.copy_(rand(mod.bias, -0.5, 0.5))
            elif isinstance(mod, RSign):
                mod.alpha.copy_(rand(mod.alpha, -0.2, 0.2))
            elif isinstance(mod, RPReLU):
                for p in (mod.gamma, mod.zeta):
                    p.copy_(rand(p, -0.2, 0.2))
            if isinstance(mod, Binarizer | DyPReLU) and hasattr(mod, "fc2"):
                mod.fc2.weight.copy_(rand(mod.fc2.weight, -0.1, 0.1))
            if isinstance(mod, Binarizer):
                mod.lam.fill_(mod.lam_max)


def convert_random(name: str, kwargs: dict, shape: tuple, recipe: str):
    torch.manual_seed(0)
    float_model = models.get(name, **kwargs).eval()
    randomize(float_model, seed=1)
    x = torch.randn(shape)
    bnn = binarize.convert(float_model, recipe=recipe, example_inputs=(x,), teacher=False)
    randomize(bnn.student, seed=2)
    binarize.nn.set_binarization(bnn, activations=True, weights=True)
    return bnn.eval(), x


def student_output(bnn: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = bnn(x)
    return out.numpy()


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize(("name", "kwargs", "shape"), MODELS, ids=[m[0] for m in MODELS])
def test_runtime_matches_student(name: str, kwargs: dict, shape: tuple, recipe: str) -> None:
    bnn, x = convert_random(name, kwargs, shape, recipe)
    model = runtime.load(binarize.pack(bnn, (x,)))
    y = model.predict(x.numpy())
    ref = student_output(bnn, x)
    assert y.shape == ref.shape
    scale = float(np.abs(ref).max()) + 1e-6
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * scale)


def _layer_alone(layer: nn.Module) -> fx.GraphModule:
    """``layer`` (a copy, without scale and bias) as a one-node GraphModule."""
    layer = copy.deepcopy(layer)
    layer.weight_scale = "none"
    layer.bias = None
    root = nn.Module()
    root.layer = layer
    graph = fx.Graph()
    graph.output(graph.call_module("layer", (graph.placeholder("x"),)))
    return fx.GraphModule(root, graph)


@pytest.mark.parametrize("recipe", ["xnor", "reactnet", "dybnn"])
def test_every_binary_layer_integer_result_is_exact(recipe: str) -> None:
    bnn, x = convert_random("resnet18", {"num_classes": 10}, (2, 3, 64, 64), recipe)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        mod.register_forward_hook(lambda m, a, o, n=n: inputs.__setitem__(n, a[0]))
        for n, mod in bnn.student.named_modules()
        if isinstance(mod, BinaryConv2d | BinaryLinear)
    ]
    student_output(bnn, x)
    for h in hooks:
        h.remove()
    assert len(inputs) >= 16
    layers = dict(bnn.student.named_modules())
    for name, layer_input in inputs.items():
        alone = _layer_alone(layers[name]).eval()
        with torch.no_grad():
            expected = alone(layer_input).numpy()
        assert np.array_equal(expected, np.round(expected)), name
        got = runtime.load(binarize.pack(alone, (layer_input,))).predict(layer_input.numpy())
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("recipe", ["reactnet", "dybnn"])
def test_top1_agreement_on_1000_random_inputs(recipe: str) -> None:
    bnn, _ = convert_random("resnet_small", {"num_classes": 10, "width": 16}, (2, 1, 28, 28),
                            recipe)  # fmt: skip
    x = torch.randn(1000, 1, 28, 28)
    model = runtime.load(binarize.pack(bnn, (x[:2],)))
    got = model.predict(x.numpy()).argmax(1)
    expected = student_output(bnn, x).argmax(1)
    agreement = float((got == expected).mean())
    assert agreement >= 0.995, agreement


def test_every_recipe_is_covered() -> None:
    assert sorted(RECIPES) == sorted(recipes.names())
