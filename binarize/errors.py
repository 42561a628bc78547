"""The library's errors under their user-facing name (defined in :mod:`operators.errors`,
the lowest layer, so every package can raise them without importing ``binarize``)."""

from __future__ import annotations

from operators.errors import BinarizeError, ConversionError, TrainingError

__all__ = ["BinarizeError", "ConversionError", "TrainingError"]
