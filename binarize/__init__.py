"""binarize: float PyTorch network -> trainable binary network -> bit-packed CPU runtime.

bnn = binarize.convert(model, recipe="dybnn", example_inputs=(x,))
binarize.summary(bnn, example_inputs=(x,))
history = binarize.finetune(bnn, train_loader, val_loader, epochs=8)
packed = binarize.pack(bnn, example_inputs=(x,), path="model.bnn")
y = runtime.load("model.bnn").predict(x_numpy)
"""

from __future__ import annotations

from binarize import data, distill, models, nn, recipes, schedule
from binarize.convert import BinaryModel, convert
from binarize.errors import BinarizeError, ConversionError, TrainingError
from binarize.pack import pack
from binarize.summary import summary
from binarize.train import History, finetune

# `convert`, `pack`, `summary` are both submodules and the functions users call: the
# imports above bind the functions after the submodules load, so `binarize.pack(...)` is
# always the function.

__version__ = "0.1.0"

__all__ = [
    "BinarizeError",
    "BinaryModel",
    "ConversionError",
    "History",
    "TrainingError",
    "convert",
    "data",
    "distill",
    "finetune",
    "models",
    "nn",
    "pack",
    "recipes",
    "schedule",
    "summary",
]
