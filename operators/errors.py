"""Library errors. Every message says what was wrong, where, and what to do about it."""

from __future__ import annotations


class BinarizeError(Exception):
    """Base class of every error raised by the training-time library."""


class ConversionError(BinarizeError):
    """A model (or one of its nodes or layers) cannot be converted, or packed, as asked."""


class TrainingError(BinarizeError):
    """Fine-tuning cannot go on: bad data from a loader, a non-finite loss, an unwritable
    checkpoint folder. The last good checkpoint is left untouched."""
