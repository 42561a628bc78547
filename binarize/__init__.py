"""binarize: float PyTorch network -> trainable binary network -> bit-packed CPU runtime.

    bnn = binarize.convert(model, recipe="dybnn", example_inputs=(x,))
    binarize.summary(bnn, example_inputs=(x,))
    history = binarize.finetune(bnn, train_loader, val_loader, epochs=8)
    packed = binarize.pack(bnn, example_inputs=(x,), path="model.bnn")
    y = runtime.load("model.bnn").predict(x_numpy)
"""

from __future__ import annotations

import importlib
from typing import Any

from binarize.errors import BinarizeError, ConversionError, TrainingError

__version__ = "0.1.0"

# Public names resolved on first use, so `import binarize` stays cheap and each piece imports
# only what it needs.
_LAZY = {
    "convert": "binarize.convert",
    "BinaryModel": "binarize.convert",
    "summary": "binarize.summary",
    "finetune": "binarize.train",
    "History": "binarize.train",
    "pack": "binarize.pack",
}
_SUBMODULES = {"nn", "recipes", "schedule", "distill", "models", "data"}

__all__ = ["BinarizeError", "ConversionError", "TrainingError", *_LAZY, *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"binarize.{name}")
    raise AttributeError(f"module 'binarize' has no attribute {name!r}")
