"""binarize's packed-model runtime: numpy + numba + safetensors only (never torch).

    model = runtime.load("model.bnn")          # validates the whole file first
    y = model.predict(x)                        # float32 NCHW (or [N, F]) in, float32 out
"""

from __future__ import annotations

from runtime.errors import InputError, InvalidModelError, RuntimeModelError

__all__ = ["InputError", "InvalidModelError", "RuntimeModelError"]
