"""Float conv2d / dense kernels against a slow numpy reference of F.conv2d semantics."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from runtime.errors import InputError, InvalidModelError
from runtime.kernels import conv as conv_kernels
from runtime.kernels import (
    conv2d,
    dense,
    prepare_conv2d,
    prepare_dense,
)


def naive_conv2d(x, weight, stride, padding, dilation, groups):
    """x f32[N, H, W, C] (NHWC), weight [O, C/g, kh, kw] (PyTorch) -> float64 NHWC."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out_channels, group_in, kh, kw = weight.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    windows = sliding_window_view(padded, span, axis=(1, 2))[:, ::sh, ::sw, :, ::dh, ::dw]
    per_group = out_channels // groups
    outputs = [
        np.einsum("nyxcij,ocij->nyxo", windows[..., g * group_in:(g + 1) * group_in, :, :],
                  weight[g * per_group:(g + 1) * per_group])
        for g in range(groups)
    ]
    return np.concatenate(outputs, axis=-1)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    group_in=st.integers(1, 4),
    groups=st.sampled_from([1, 1, 2, 3]),
    per_group_out=st.integers(1, 4),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)) | st.just((7, 7)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**31),
)
def test_conv2d_matches_reference(batch, group_in, groups, per_group_out, kernel, stride,
                                  padding, dilation, hw, seed):
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    assume(all(s + 2 * p >= k for s, p, k in zip(hw, padding, span)))
    rng = np.random.default_rng(seed)
    channels = group_in * groups
    x = rng.standard_normal((batch, *hw, channels)).astype(np.float32)
    weight = rng.standard_normal((per_group_out * groups, group_in, *kernel)).astype(np.float32)
    plan = prepare_conv2d(weight, channels, hw, stride, padding, dilation, groups)
    got = conv2d(plan, x)
    expected = naive_conv2d(x, weight, stride, padding, dilation, groups)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    channels=st.sampled_from([2, 8, 17]),
    multiplier=st.sampled_from([1, 1, 2]),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    hw=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    seed=st.integers(0, 2**31),
)
def test_depthwise_conv2d_matches_reference(channels, multiplier, kernel, stride, padding,
                                            dilation, hw, seed):
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    assume(all(s + 2 * p >= k for s, p, k in zip(hw, padding, span)))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *hw, channels)).astype(np.float32)
    weight = rng.standard_normal((channels * multiplier, 1, *kernel)).astype(np.float32)
    plan = prepare_conv2d(weight, channels, hw, stride, padding, dilation, groups=channels)
    assert plan.depthwise
    expected = naive_conv2d(x, weight, stride, padding, dilation, channels)
    np.testing.assert_allclose(conv2d(plan, x), expected, rtol=1e-4, atol=1e-4)


def test_dense_matches_matmul():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 10)).astype(np.float32)
    weight = rng.standard_normal((4, 10)).astype(np.float32)
    np.testing.assert_allclose(dense(prepare_dense(weight), x),
                               x.astype(np.float64) @ weight.T, rtol=1e-5, atol=1e-5)


def test_float_kernels_reject_bad_arguments():
    with pytest.raises(InvalidModelError, match="groups"):
        prepare_conv2d(np.zeros((4, 3, 3, 3), np.float32), 6, (5, 5), groups=4)
    with pytest.raises(InvalidModelError, match="float32"):
        prepare_conv2d(np.zeros((4, 3, 3, 3), np.float64), 3, (5, 5))
    plan = prepare_conv2d(np.zeros((4, 3, 3, 3), np.float32), 3, (5, 5))
    with pytest.raises(InputError, match=r"float32\[N, 5, 5, 3\]"):
        conv2d(plan, np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(InputError, match=r"float32\[N, 3\]"):
        dense(prepare_dense(np.zeros((2, 3), np.float32)), np.zeros((1, 4), np.float32))


@pytest.mark.parametrize("threads", [2, 3])
def test_conv2d_row_split_among_threads_matches_reference(threads, monkeypatch):
    """The tiles of a big conv are shared among ``threads`` threads (the caller and a pool of
    threads - 1); 1 * 47 * 47 = 2209 output pixels divide evenly into neither the tiles nor
    the threads, so a split that drops or misplaces the remainder pixels, or offsets a tile,
    differs from the reference (tests/runtime/test_conv_tiled.py tests the tiling itself).
    K = 3*3*64 = 576 is past the direct kernel's limit, so the tiled path runs."""
    rng = np.random.default_rng(1)
    size, channels, out_channels = 47, 64, 64  # 2209 * 576 * 64 MACs: far above the split size
    x = rng.standard_normal((1, size, size, channels)).astype(np.float32)
    weight = rng.standard_normal((out_channels, channels, 3, 3)).astype(np.float32)
    plan = prepare_conv2d(weight, channels, (size, size), 1, 1)
    assert plan.direct is None
    monkeypatch.setattr(conv_kernels, "_pools", {})  # to see below that the split ran
    before = numba.get_num_threads()
    if threads <= numba.config.NUMBA_NUM_THREADS:
        numba.set_num_threads(threads)
    else:  # fewer cores than `threads`: the split reads its thread count from numba
        monkeypatch.setattr(numba, "get_num_threads", lambda: threads)
    try:
        got = conv2d(plan, x)
    finally:
        numba.set_num_threads(before)
    assert list(conv_kernels._pools) == [threads]  # the split ran, with this many blocks
    expected = naive_conv2d(x, weight, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
