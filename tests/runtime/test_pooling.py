"""maxpool2d / avgpool2d kernels, bit for bit against a naive numpy loop over the taps.

The reference folds the in-image taps of each window in (ky, kx) order into an accumulator
that starts at -inf (max: ``acc = v if v > acc else acc``, so NaN taps are skipped and of
equal values such as +0 / -0 the first tap's is kept) or +0 (sum, in float32, then divided
by ``avgpool_divisor``): the semantics the kernel defines, compared with ``tobytes``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime.ops.pooling import avgpool2d, avgpool_divisor, global_avgpool, maxpool2d
from runtime.schema import pool_output_size


def _reference(x, kernel, stride, padding, dilation, ceil_mode, is_max, divisor=None):
    n, height, width, channels = x.shape
    out_h, out_w = (
        pool_output_size(size, k, s, p, d, ceil_mode)
        for size, k, s, p, d in zip((height, width), kernel, stride, padding, dilation)
    )
    out = np.empty((n, out_h, out_w, channels), np.float32)
    for oy, ox in itertools.product(range(out_h), range(out_w)):
        acc = np.full((n, channels), -np.inf if is_max else 0.0, np.float32)
        for ky, kx in itertools.product(range(kernel[0]), range(kernel[1])):
            iy = oy * stride[0] - padding[0] + ky * dilation[0]
            ix = ox * stride[1] - padding[1] + kx * dilation[1]
            if 0 <= iy < height and 0 <= ix < width:
                v = x[:, iy, ix, :]
                acc = np.where(v > acc, v, acc) if is_max else (acc + v).astype(np.float32)
        out[:, oy, ox] = acc if is_max else acc / divisor[oy, ox]
    return out


def _max_attrs(kernel, stride, padding, dilation=1, ceil_mode=False):
    return {
        "kernel": (kernel, kernel),
        "stride": (stride, stride),
        "padding": (padding, padding),
        "dilation": (dilation, dilation),
        "ceil_mode": ceil_mode,
    }


CASES = [
    (k, s, p, ceil, size)
    for k in (2, 3)
    for s in (1, 2)
    for p in (0, 1)
    for ceil in (False, True)
    for size in ((7, 9), (5, 5), (8, 3))
    if 2 * p <= k
]


@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil_mode", "size"), CASES)
def test_maxpool_matches_the_tap_loop(kernel, stride, padding, ceil_mode, size):
    x = np.random.default_rng(kernel * 100 + stride * 10 + padding).standard_normal(
        (3, *size, 5), dtype=np.float32
    )
    attrs = _max_attrs(kernel, stride, padding, ceil_mode=ceil_mode)
    got = maxpool2d([x], {}, attrs)
    expected = _reference(x, *(attrs[a] for a in ("kernel", "stride", "padding", "dilation")),
                          ceil_mode, True)
    assert got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil_mode", "size"), CASES)
@pytest.mark.parametrize("include", [False, True])
def test_avgpool_matches_the_tap_loop(kernel, stride, padding, ceil_mode, size, include):
    x = np.random.default_rng(kernel + stride + padding).standard_normal(
        (2, *size, 7), dtype=np.float32
    )
    attrs = {
        "kernel": (kernel, kernel),
        "stride": (stride, stride),
        "padding": (padding, padding),
        "ceil_mode": ceil_mode,
        "count_include_pad": include,
    }
    got = avgpool2d([x], {}, attrs)
    rows = avgpool_divisor(size[0], kernel, stride, padding, ceil_mode, include)
    cols = avgpool_divisor(size[1], kernel, stride, padding, ceil_mode, include)
    expected = _reference(x, (kernel,) * 2, (stride,) * 2, (padding,) * 2, (1, 1), ceil_mode,
                          False, rows[:, None] * cols[None, :])
    assert got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize(("dilation", "padding"), [(2, 0), (2, 2), (3, 1)])
def test_maxpool_dilated_and_mixed_axes(dilation, padding):
    x = np.random.default_rng(dilation).standard_normal((2, 9, 11, 3), dtype=np.float32)
    attrs = {
        "kernel": (3, 2),
        "stride": (2, 1),
        "padding": (padding, min(padding, 1)),
        "dilation": (dilation, 1),
        "ceil_mode": True,
    }
    got = maxpool2d([x], {}, attrs)
    expected = _reference(x, *(attrs[a] for a in ("kernel", "stride", "padding", "dilation")),
                          True, True)
    assert got.tobytes() == expected.tobytes()


def test_maxpool_skips_nan_and_keeps_the_first_of_equal_zeros():
    """NaN taps are skipped (a window of NaN only gives -inf), -inf stays -inf, and of +0 and
    -0 the earlier tap in (ky, kx) order wins: max is ``v if v > acc else acc``. (torch
    would propagate the NaN; this pins what the runtime does.)"""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 7, 9), dtype=np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0, :3, :3, 0] = np.nan  # the first window of channel 0 is all NaN
    x[1, :, :, 1] = -np.inf
    x[1, :, :, 2] = np.where(rng.random((7, 7)) < 0.5, np.float32(0.0), np.float32(-0.0))
    x[1, :, :, 3] = -0.0
    x[1, 0, 1, 3] = 0.0
    attrs = _max_attrs(3, 2, 1)
    got = maxpool2d([x], {}, attrs)
    expected = _reference(x, (3, 3), (2, 2), (1, 1), (1, 1), False, True)
    assert got.tobytes() == expected.tobytes()
    assert got[0, 0, 0, 0] == -np.inf
    assert not np.isnan(got).any()
    assert (got[1, :, :, 1] == -np.inf).all()
    assert np.signbit(got[1, 0, 0, 3]) and not np.signbit(got[1, 0, 1, 3])


def test_pool_of_a_non_contiguous_view():
    x = np.random.default_rng(5).standard_normal((2, 9, 9, 12), dtype=np.float32)[..., ::3]
    got = maxpool2d([x], {}, _max_attrs(3, 2, 1))
    expected = _reference(x, (3, 3), (2, 2), (1, 1), (1, 1), False, True)
    assert got.tobytes() == expected.tobytes()


def test_bireal_stem_pool():
    """The 3x3 / 2 pad-1 pool on Bi-Real-18's stem output shape (smaller batch of 112x112)."""
    x = np.random.default_rng(6).standard_normal((2, 112, 112, 64), dtype=np.float32)
    got = maxpool2d([x], {}, _max_attrs(3, 2, 1))
    assert got.shape == (2, 56, 56, 64)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    np.testing.assert_array_equal(got, windows[:, ::2, ::2].max(axis=(-2, -1)))


@pytest.mark.parametrize("shape", [(1, 7, 7, 512), (3, 5, 9, 70), (2, 1, 1, 3)])
def test_global_avgpool_is_the_float32_mean_bit_for_bit(shape):
    """The sum in row-major pixel order, then one division by H*W: numpy's float32 mean."""
    x = (np.random.default_rng(len(shape)).standard_normal(shape) * 10).astype(np.float32)
    expected = x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
    got = global_avgpool(x)
    assert got.shape == (shape[0], 1, 1, shape[3])
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
