"""Structures of the real torchvision models that ``benchmarks/zoo_check.py`` found failing,
reproduced by hand (the suite never imports torchvision): each converts, packs, and the
runtime predicts what the student computes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import fx, nn

import binarize
import runtime

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth's contract: drop the whole residual branch per sample
    ("row") with probability p while training, the identity otherwise."""
    if not training or p == 0.0:
        return x
    keep = torch.empty(x.shape[0], 1, 1, 1).bernoulli_(1.0 - p) / (1.0 - p)
    return x * keep


# torchvision wraps it for FX, so a trace records one call of it (not its body), with the
# `training` flag the module had at trace time; the project recognises it by its module.
stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"
fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth: not a torch.nn module, so tracing goes inside."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, "row", self.training)


class ResidualBlocks(nn.Module):
    """EfficientNet's MBConv / ConvNeXt's block shape: x + stochastic_depth(branch(x))."""

    def __init__(self, width: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width))
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
            )
            for _ in range(blocks)
        )
        self.drops = nn.ModuleList(StochasticDepth(0.2 * (i + 1)) for i in range(blocks))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for branch, drop in zip(self.branches, self.drops):
            x = x + drop(branch(x))
        return self.head(x)


def calibrate_and_pack(bnn: Any, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm statistics from ``x`` (train-mode passes, cumulative averages), a fine-tuning
    step, finalize, pack; the eval-mode student's and the runtime's outputs on ``x``."""
    for norm in bnn.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.reset_running_stats()
            norm.momentum = None
    bnn.train()
    with torch.no_grad():
        for batch in x.split(16):
            bnn(batch)
    y = torch.randint(0, 5, (len(x),))
    binarize.finetune(bnn, (x, y), epochs=1, lr=1e-3, batch_size=32, progress=False)
    bnn.schedule.finalize(bnn)
    packed = runtime.load(binarize.pack(bnn, example_inputs=(x[:2],)))
    with torch.no_grad():
        expected = bnn.eval()(x).numpy()
    return expected, packed.predict(x.numpy())


@pytest.mark.parametrize("recipe", ["reactnet", "xnor"])
def test_stochastic_depth_is_the_identity_it_traced_as(recipe: str) -> None:
    torch.manual_seed(0)
    model = ResidualBlocks()
    x = torch.randn(64, 3, 12, 12)
    bnn = binarize.convert(model, recipe=recipe, example_inputs=(x[:2],))
    calls = [n for n in bnn.student.graph.nodes if n.op == "call_function"]
    assert not [n for n in calls if n.target is stochastic_depth]
    expected, got = calibrate_and_pack(bnn, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_stochastic_depth_while_training_stays_a_call() -> None:
    """A node recorded with training=True (a trace in train mode, which convert never does)
    is not the identity, and is left for the export to refuse."""
    from passes.trace import _drop_inference_identities

    graph = fx.Graph()
    x = graph.placeholder("x")
    kept = graph.call_function(stochastic_depth, (x, 0.5, "row", True))
    dropped = graph.call_function(stochastic_depth, (kept, 0.5, "row"), {"training": False})
    graph.output(dropped)
    _drop_inference_identities(graph)
    assert [n.op for n in graph.nodes] == ["placeholder", "call_function", "output"]
    assert next(n for n in graph.nodes if n.op == "output").args[0] is kept
