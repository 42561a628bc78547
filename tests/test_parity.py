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
import operators
import runtime
from binarize import models, recipes
from binarize.pack import lower_for_runtime
from operators import Binarizer, BinaryConv2d, BinaryLinear, DyPReLU, RPReLU, RSign

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

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    operators.set_binarization(bnn, activations=True, weights=True)
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


def calibrate_classifier(bnn: nn.Module, x: torch.Tensor) -> None:
    """Standardize the float classifier's inputs over ``x``, as training would.

    With random weights the classifier's bias and the features' mean (the same for every
    input) dominate the logits, and the student answers nearly every input with one class. With
    ``W' = W / std(f)`` and ``b' = -W' mean(f)`` over the features ``f`` of ``x``, every logit
    has mean 0 across inputs and the input decides the top class.
    """
    head = [m for m in bnn.student.modules() if type(m) is nn.Linear][-1]
    features: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda m, a: features.append(a[0]))
    student_output(bnn, x)
    hook.remove()
    (f,) = features
    with torch.no_grad():
        head.weight /= f.std(0) + 1e-6
        head.bias.copy_(-(head.weight @ f.mean(0)))


def close_per_sample(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Which samples' outputs all agree to the end-to-end tolerance (module docstring)."""
    scale = float(np.abs(ref).max()) + 1e-6
    return np.isclose(got, ref, rtol=1e-4, atol=1e-4 * scale).reshape(len(ref), -1).all(axis=1)


@pytest.mark.parametrize("recipe", ["reactnet", "dybnn"])
def test_top1_agreement_on_1000_random_inputs(recipe: str) -> None:
    bnn, _ = convert_random("resnet_small", {"num_classes": 10, "width": 16}, (2, 1, 28, 28),
                            recipe)  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    calibrate_classifier(bnn, torch.randn(256, 1, 28, 28, generator=gen))
    x = torch.randn(1000, 1, 28, 28, generator=gen)
    ref = student_output(bnn, x)
    expected = ref.argmax(1)
    counts = np.bincount(expected, minlength=10)
    # a runtime answering one class for every input (or copying one sample's per-sample
    # DySign thresholds to all) must not pass: the student's answers are spread out
    assert (counts > 0).sum() >= 8 and counts.max() <= 500, counts
    got = runtime.load(binarize.pack(bnn, (x[:2],))).predict(x.numpy())
    agreement = float((got.argmax(1) == expected).mean())
    assert agreement >= 0.995, agreement
    # and the logits themselves, per sample: only a bit flipped at a near-tie may change them
    close = close_per_sample(got, ref)
    assert close.mean() >= 0.99, np.flatnonzero(~close)


def test_dysign_thresholds_stay_per_sample_across_predict_chunks() -> None:
    """predict runs large batches in chunks (64 samples for this small model); DySign's
    thresholds are computed per sample, so each sample of a 200-input batch (3 full chunks and
    8) gets the output it gets alone and the student's."""
    bnn, _ = convert_random("small_cnn", {}, (2, 1, 28, 28), "dybnn")
    x = torch.randn(200, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    model = runtime.load(binarize.pack(bnn, (x[:2],)))
    chunk = model.budget.chunk
    assert chunk == 64
    got = model.predict(x.numpy())
    ref = student_output(bnn, x)
    close = close_per_sample(got, ref)
    assert close.mean() >= 0.99, np.flatnonzero(~close)
    boundaries = range(chunk, len(x), chunk)
    for i in (0, 1, *boundaries, *(b - 1 for b in boundaries), len(x) - 1):  # either side
        alone = model.predict(x[i : i + 1].numpy())
        np.testing.assert_allclose(alone[0], got[i], rtol=1e-5, atol=1e-5, err_msg=str(i))


@pytest.mark.parametrize("name", ["small_cnn", "resnet_small"])
def test_batchnorm_weight_zero_folds_to_constant_bits(name: str) -> None:
    """A BatchNorm channel with weight 0 outputs its bias whatever the input; folded into the
    next binarizer it becomes a +inf (bit always 0) or -inf (always 1) threshold. small_cnn's
    stem BN feeds a binarizer from a float conv, resnet_small's block BNs from binary convs
    (integer sums: the exact rational fold)."""
    kwargs = {"num_classes": 10, "width": 16} if name == "resnet_small" else {}
    bnn, x = convert_random(name, kwargs, (2, 1, 28, 28), "xnor")
    with torch.no_grad():
        for mod in bnn.student.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight[::3] = 0.0
                mod.bias[::3] = torch.where(torch.arange(len(mod.bias[::3])) % 2 == 0, 0.5, -0.5)
    thresholds = np.concatenate([
        node.params["threshold"] for node in lower_for_runtime(bnn, (x,)).nodes
        if node.op == "quantize"
    ])  # fmt: skip
    assert np.isposinf(thresholds).any() and np.isneginf(thresholds).any()
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    got = runtime.load(binarize.pack(bnn, (x[:2],))).predict(x.numpy())
    ref = student_output(bnn, x)
    scale = float(np.abs(ref).max()) + 1e-6
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)


def test_every_recipe_is_covered() -> None:
    assert sorted(RECIPES) == sorted(recipes.names())
