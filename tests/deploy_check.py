"""One check shared by the spelling parity tests: convert -> fine-tune one epoch -> finalize ->
pack -> runtime predict, compared with the eval-mode student on the same inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

import binarize
import runtime


def deploy_and_compare(
    model: nn.Module, x: torch.Tensor, recipe: str, *, lr: float = 1e-3, **options: Any
) -> runtime.Model:
    """Returns the loaded packed model after asserting that >= 95% of the samples match the
    student to 1e-4 and that its top-1 answers agree on >= 95% of them. Float32 rounding can
    put a value on the other side of a threshold now and then: the bounds allow for that."""
    y = torch.randint(0, 5, (len(x),))
    bnn = binarize.convert(model, recipe=recipe, example_inputs=(x[:2],), **options)
    binarize.finetune(bnn, (x, y), epochs=1, lr=lr, batch_size=32, progress=False)
    bnn.schedule.finalize(bnn)
    packed = runtime.load(binarize.pack(bnn, example_inputs=(x[:2],)))
    with torch.no_grad():
        expected = bnn.eval()(x).numpy()
    got = packed.predict(x.numpy())
    close = np.isclose(got, expected, rtol=1e-4, atol=1e-4).all(axis=1)
    assert close.mean() >= 0.95, f"only {close.mean():.0%} of samples match"
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
    return packed
