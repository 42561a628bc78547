"""binarize's packed-model runtime: numpy + numba + safetensors only (never torch).

    model = runtime.load("model.bnn")          # validates the whole file first
    y = model.predict(x)                        # float32 NCHW (or [N, F]) in, float32 out
    print(model.summary())

``runtime.format.write_model`` writes the file (``binarize.pack`` calls it); docs/IR.md is the
contract between the two.
"""

from __future__ import annotations

from runtime.errors import (
    InputError,
    InvalidModelError,
    NonFiniteError,
    RuntimeModelError,
    ThreadingLayerError,
)
from runtime.model import Model, load
from runtime.schema import TensorSpec

__all__ = [
    "InputError",
    "InvalidModelError",
    "Model",
    "NonFiniteError",
    "RuntimeModelError",
    "TensorSpec",
    "ThreadingLayerError",
    "load",
]
