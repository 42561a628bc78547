"""The README's user path, end to end: convert -> summary -> finetune -> pack -> runtime."""

from __future__ import annotations

import numpy as np
import torch

import binarize
import runtime
from binarize.data import synthetic_images
from binarize.models import resnet_small


def test_readme_user_path(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = synthetic_images(192, size=16, classes=4, noise=0.5, seed=0)
    model = resnet_small(num_classes=4, in_channels=1, width=8)
    example = (x[:2],)

    bnn = binarize.convert(model, recipe="dybnn", example_inputs=example)
    report = binarize.summary(bnn, example_inputs=example, print_fn=None)
    assert report.totals.packed_size_bytes < report.totals.float_size_bytes
    history = binarize.finetune(
        bnn, (x[:128], y[:128]), (x[128:], y[128:]), epochs=2, lr=1e-2, batch_size=32,
        progress=False,
    )  # fmt: skip
    assert len(history) == 2
    path = tmp_path / "model.bnn"
    packed = binarize.pack(bnn, example_inputs=example, path=path)
    assert path.read_bytes() == packed

    predictions = runtime.load(path).predict(x[128:].numpy())
    with torch.no_grad():
        expected = bnn.eval()(x[128:]).numpy()
    np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-4)
