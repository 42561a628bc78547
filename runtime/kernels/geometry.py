"""Convolution geometry shared by the binary and float kernels: attribute pairs, output size,
how the output rows and channels are cut into tasks for the threads."""

from __future__ import annotations

import numpy as np

from runtime.errors import InvalidModelError
from runtime.kernels.pack import WORD_BITS


def int_pair(value, name: str, minimum: int, layer: str) -> tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``, as a pair (``layer`` names the caller in
    the error). Raises InvalidModelError otherwise."""
    try:
        pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
        valid = len(pair) == 2 and all(int(v) == v and v >= minimum for v in pair)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InvalidModelError(
            f"{layer} {name} must be an int or a pair of ints >= {minimum}, got {value!r}."
        )
    return int(pair[0]), int(pair[1])


def is_pointwise(kernel, stride, padding) -> bool:
    """A 1x1 conv with stride 1 and no padding: output pixel p reads input pixel p, so its
    input rows serve as they are (no im2col, runs across rows and samples)."""
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """PyTorch's output size of a convolution along one axis:
    floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


ROWS_PER_THREAD = 4  # fewer row tasks than this per thread: split the channels too


def channel_splits(rows: int, out_channels: int, threads: int) -> int:
    """Shares of the output channels per row task: 1, or the doubling that first gives every
    thread ROWS_PER_THREAD tasks, while each share stays a multiple of 64 channels (so that
    its bits are whole words). A ResNet's 7x7 outputs (7 rows, 4:3 over 2 threads) become 14
    tasks of half the channels; a single-pixel output (a dense layer at batch 1) up to eight
    tasks at 2 threads."""
    splits = 1
    while rows * splits < ROWS_PER_THREAD * threads \
            and out_channels % (2 * splits * WORD_BITS) == 0:
        splits *= 2
    return splits
