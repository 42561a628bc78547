"""The modern zoo models (MobileNetV3, EfficientNet, ShuffleNetV2, SqueezeNet, ConvNeXt) go
the whole way: convert, fine-tune a step, finalize, pack, and the runtime matches the student.

Tiny widths and 32x32 inputs keep each case to a few seconds. BatchNorm statistics are
calibrated first (a few train-mode batches without gradients, cumulative averages), so the
eval-mode student is well scaled and the comparison tests the runtime, not a random-init
network whose activations sit at the binarizers' thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import binarize
import operators
import runtime
from binarize import models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> constructor keywords (input [N, 3, 32, 32], 5 classes)
CASES: dict[str, dict[str, Any]] = {
    "mobilenet_v3_small": {"width_mult": 0.25},
    "efficientnet_b0": {"width_mult": 0.25, "depth_mult": 0.25},
    "shufflenet_v2": {"width_mult": 0.25, "repeats": (2, 1, 1)},
    "squeezenet": {"width_mult": 0.25},
    "convnext": {"width": 8, "depths": (1, 2, 1, 1)},
}
#: An op each model's packed plan must hold (its structure that is not a plain conv net).
SIGNATURE_OPS: dict[str, str] = {
    "shufflenet_v2": "channel_slice",  # x1, x2 = x.chunk(2, dim=1) in each stride-1 unit
    "convnext": "layernorm_channels",  # LayerNorm2d's F.layer_norm and the blocks' LayerNorm
}


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 16) -> None:
    """Set every BatchNorm's running statistics to the average over ``x``'s batches.

    With ``momentum=None`` BatchNorm keeps the cumulative mean of the batch statistics, so
    after the batches its running mean and variance are their plain averages.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    was_training = model.training
    model.train()
    with torch.no_grad():
        for batch in x.split(batch_size):
            model(batch)
    model.train(was_training)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@pytest.mark.parametrize("recipe", ["reactnet", "xnor"])
@pytest.mark.parametrize("name", list(CASES))
def test_zoo_model_converts_trains_packs_and_matches(name: str, recipe: str) -> None:
    torch.manual_seed(0)
    model = models.get(name, num_classes=5, **CASES[name])
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 5, (64,))
    bnn = binarize.convert(model, recipe=recipe, example_inputs=(x[:2],))
    assert any(isinstance(m, operators.BinaryConv2d) for m in bnn.modules()), name
    calibrate_batchnorm(bnn, x)
    binarize.finetune(bnn, (x, y), epochs=1, lr=1e-3, batch_size=32, progress=False)
    bnn.schedule.finalize(bnn)
    packed = runtime.load(binarize.pack(bnn, example_inputs=(x[:2],)))
    if name in SIGNATURE_OPS:
        assert SIGNATURE_OPS[name] in {s.label.split("+")[0] for s in packed.plan}
    with torch.no_grad():
        expected = bnn.eval()(x).numpy()
    got = packed.predict(x.numpy())
    # 1e-4 absolute and relative to the outputs' range too: some of these nets start with
    # logits near 1e-3 (MobileNetV3's 0.01-std classifier, SqueezeNet's ReLU before the pool)
    scale = float(np.abs(expected).max())
    assert scale > 0, "the student's outputs are all zero"
    close = (
        np.isclose(got, expected, rtol=1e-4, atol=1e-4)
        & np.isclose(got / scale, expected / scale, rtol=1e-4, atol=1e-4)
    ).all(axis=1)
    # float32 rounding can put a value on the other side of a binarizer's threshold now and
    # then; almost every sample must still match to 1e-4 and the top-1 must agree
    assert close.mean() >= 0.95, f"only {close.mean():.0%} of samples match"
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
