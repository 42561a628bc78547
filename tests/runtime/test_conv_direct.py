"""The direct float conv2d (runtime/kernels/conv_direct.py) and its FMA micro-kernel
(runtime/kernels/fma.py) against float64 references.

The cases reach every branch of the kernel: rows of 6k pixels, rows with a 1-5 pixel tail
(recomputed by an overlapping six-pixel call), rows under six pixels (one by one), the runs
of a pointwise conv across rows and samples, output channels past the last full 16-channel
block and 64-channel word, and rows split into channel shares (few rows per thread).
"""

from __future__ import annotations

import zlib

import numba
import numpy as np
import pytest
from numba import njit

from runtime.kernels import conv as conv_kernels
from runtime.kernels import conv2d, prepare_conv2d
from runtime.kernels.fma import FMA_BLOCK, fma_block1, fma_block6
from runtime.kernels.geometry import channel_splits
from tests.runtime.test_conv_tiled import assert_bits_match_except_ties, make_case
from tests.runtime.test_kernels_float import naive_conv2d

# (name, batch, C, O, hw, kernel, stride, padding, dilation, groups)
CASES = [
    ("stem 7x7/2, tails", 2, 3, 64, (29, 31), (7, 7), (2, 2), (3, 3), (1, 1), 1),
    ("3x3, 17 channels, rows of 5", 2, 4, 17, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ("3x3, 70 channels", 1, 8, 70, (9, 13), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ("dilated 3x2 stride 1x2", 2, 5, 9, (13, 10), (3, 2), (1, 2), (2, 1), (2, 3), 1),
    ("pointwise runs across samples", 3, 24, 33, (7, 9), (1, 1), (1, 1), (0, 0), (1, 1), 1),
    ("pointwise, 4 pixels", 1, 16, 20, (2, 2), (1, 1), (1, 1), (0, 0), (1, 1), 1),
    ("pointwise shares", 1, 32, 256, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 1),
    ("3x3 shares", 1, 16, 128, (3, 4), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ("downsample 1x1/2", 2, 16, 20, (9, 9), (1, 1), (2, 2), (0, 0), (1, 1), 1),
]


def run(plan, x, epilogue, shortcut, threads: int) -> np.ndarray:
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        return conv2d(plan, x, epilogue, residual=shortcut)
    finally:
        numba.set_num_threads(before)


def reference(x, weight, epilogue, shortcut, case) -> np.ndarray:
    """affine + residual + RPReLU of the float64 conv (the epilogue table's rows)."""
    _, _, _, _, _, _, stride, padding, dilation, groups = case
    table = epilogue.table.astype(np.float64)
    y = naive_conv2d(x, weight, stride, padding, dilation, groups) * table[0] + table[1]
    if shortcut is not None:
        y = y + shortcut
    return np.where(y >= table[2], y - table[2] + table[3], table[4] * (y - table[2]) + table[3])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("threads", [1, 2])
def test_direct_conv_matches_reference(case, threads):
    rng = np.random.default_rng(zlib.crc32(case[0].encode()))
    plan, x, weight, epilogue, shortcut, _ = make_case(case, rng, False, True, tiled=False)
    assert plan.direct is not None
    got = run(plan, x, epilogue, shortcut, threads)
    expected = reference(x, weight, epilogue, shortcut, case)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4,
                               atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("residual", [False, True])
def test_direct_conv_quantized_bits(case, residual):
    rng = np.random.default_rng(zlib.crc32(case[0].encode()) + 1)
    plan, x, weight, epilogue, shortcut, as_float = make_case(case, rng, True, residual,
                                                              tiled=False)
    values = reference(x, weight, as_float, shortcut, case)
    sign = epilogue.table[5].astype(np.float64)
    bits = (sign * values >= sign * (epilogue.table[6] * sign)).astype(np.uint8)
    expected = np.packbits(bits, axis=-1, bitorder="little")
    pad = (-expected.shape[-1]) % 8
    expected = np.concatenate([expected, np.zeros((*expected.shape[:-1], pad), np.uint8)], -1)
    expected = expected.view("<u8").astype(np.uint64)
    for threads in (1, 2):
        got = run(plan, x, epilogue, shortcut, threads)
        assert got.dtype == np.uint64 and got.shape == expected.shape
        assert_bits_match_except_ties(got, expected, values, epilogue)


def test_direct_conv_out_argument_and_no_epilogue():
    case = CASES[0]
    rng = np.random.default_rng(5)
    plan, x, weight, _, _, _ = make_case(case, rng, False, False, tiled=False)
    expected = naive_conv2d(x, weight, *case[6:9], 1)
    out = np.full(expected.shape, np.nan, np.float32)
    assert conv2d(plan, x, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_which_convs_run_direct():
    """groups == 1 and K = kh*kw*C <= 512 (one weight block in L1); grouped, depthwise and
    deeper convs keep their own paths."""
    def plan(c, o, k, groups=1):
        return prepare_conv2d(np.zeros((o, c // groups, k, k), np.float32), c, (8, 8),
                              padding=k // 2, groups=groups)

    assert plan(3, 64, 7).direct is not None  # K = 147
    assert plan(512, 64, 1).direct is not None  # K = 512
    assert plan(64, 64, 3).direct is None  # K = 576
    assert plan(8, 8, 3, groups=2).direct is None
    assert plan(8, 8, 3, groups=8).direct is None and plan(8, 8, 3, groups=8).depthwise
    assert conv_kernels.uses_direct(1, 512) and not conv_kernels.uses_direct(1, 513)


def test_channel_split_rule():
    """Shares only when there are fewer than 4 runs per thread, by doubling, each share a
    multiple of 64 channels."""
    assert channel_splits(112, 64, 2) == 1
    assert channel_splits(7, 512, 2) == 2  # 14 tasks >= 8
    assert channel_splits(1, 512, 2) == 8
    assert channel_splits(1, 192, 2) == 1  # 192 = 3 * 64 does not halve
    assert channel_splits(1, 64, 4) == 1


@njit
def _call_block(pixels, x, base, step, offsets, count, weights, o, acc, row, col):
    if pixels == 6:
        fma_block6(x, base, step, offsets, count, weights, o, acc, row, col)
    else:
        fma_block1(x, base, step, offsets, count, weights, o, acc, row, col)


@pytest.mark.parametrize("pixels", [6, 1])
def test_fma_block_matches_its_formula(pixels):
    """acc[row + p, col + j] = sum_k x[base + p*step + offsets[k]] * W[o, k*16 + j], and
    nothing else of acc is written."""
    rng = np.random.default_rng(pixels)
    count, blocks, step, base, row, col = 37, 3, 5, 11, 2, 16
    x = rng.standard_normal(base + 6 * step + 400).astype(np.float32)
    offsets = rng.integers(0, 400, count).astype(np.int64)
    weights = rng.standard_normal((blocks, count * FMA_BLOCK + 7)).astype(np.float32)
    acc = np.full((row + pixels + 2, col + FMA_BLOCK + 16), -7.0, np.float32)
    _call_block(pixels, x, base, step, offsets, count, weights, 1, acc, row, col)
    w = weights[1, : count * FMA_BLOCK].reshape(count, FMA_BLOCK).astype(np.float64)
    patches = np.stack([x[base + p * step + offsets] for p in range(pixels)]).astype(np.float64)
    expected = np.full(acc.shape, -7.0)
    expected[row : row + pixels, col : col + FMA_BLOCK] = patches @ w
    np.testing.assert_allclose(acc, expected, rtol=1e-5, atol=1e-5)
