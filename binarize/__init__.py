"""binarize: float PyTorch network -> trainable binary network -> bit-packed CPU runtime.

bnn = binarize.convert(model, recipe="dybnn", example_inputs=(x,))
binarize.summary(bnn, example_inputs=(x,))
history = binarize.finetune(bnn, train_loader, val_loader, epochs=8)
packed = binarize.pack(bnn, example_inputs=(x,), path="model.bnn")
y = runtime.load("model.bnn").predict(x_numpy)

Imports go one way (lowest first): ``runtime`` <- ``operators`` (the binary layers and the
errors; ``binarize.nn`` and ``binarize.errors`` re-export them) <- ``passes`` <- this package.
Every public name but the errors is loaded on first use (PEP 562 ``__getattr__``), so
``import binarize`` stays cheap and loads no pass.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from operators.errors import BinarizeError, ConversionError, TrainingError

__version__ = "0.1.0"

_SUBMODULES = ("data", "distill", "models", "nn", "recipes", "schedule")
_ATTRIBUTES = {
    "BinaryModel": "binarize.convert",
    "History": "binarize.train",
    "convert": "binarize.convert",
    "finetune": "binarize.train",
    "pack": "binarize.pack",
    "summary": "binarize.summary",
}
"""Public names defined in a submodule, by the submodule that defines them."""

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


def __getattr__(name: str) -> Any:
    """Load a public name on first use (then it is a plain attribute)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The ``binarize`` module: ``convert``, ``pack`` and ``summary`` are both submodules and
    the functions users call. Importing a submodule sets it as an attribute of its package;
    here that attribute becomes the function of the same name, so ``binarize.pack(...)`` is the
    function whatever was imported before."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _ATTRIBUTES and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
