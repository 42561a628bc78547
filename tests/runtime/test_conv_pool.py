"""The fused direct conv + max pool (runtime/kernels/conv_pool.py) against the unfused kernels.

The fused kernel must give the bits of ``conv2d`` (with its epilogue), then the max pool op,
then the quantize's packing: every geometry of pool window and stride (overlapping, tiling,
gapped windows, padding, ceil-mode sizes), channel counts with and without a partial word,
batches, one and several threads (which changes the bands and so which conv rows a task
recomputes), NaN and signed zeros in the conv output.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import InputError
from runtime.kernels import (
    conv2d,
    conv2d_maxpool,
    make_epilogue,
    pack_bits,
    prepare_conv2d,
    prepare_conv_maxpool,
)
from runtime.ops.pooling import maxpool2d
from runtime.schema import pool_output_size


def unfused(conv_plan, x, epilogue, kernel, stride, padding, ceil_mode, quantize):
    y = conv2d(conv_plan, x, epilogue)
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": (1, 1),
             "ceil_mode": ceil_mode}
    z = maxpool2d([y], {}, attrs)
    if quantize is None:
        return z, None
    channels = z.shape[-1]
    threshold, sign = quantize
    bits = pack_bits(z.reshape(-1, channels), threshold, sign)
    return z, bits.reshape(*z.shape[:-1], -1)


def case(rng, channels, in_hw, conv_kernel, conv_stride, batch):
    weight = rng.standard_normal((channels, 3, conv_kernel, conv_kernel)).astype(np.float32)
    plan = prepare_conv2d(weight, 3, in_hw, conv_stride, conv_kernel // 2)
    x = rng.standard_normal((batch, *in_hw, 3)).astype(np.float32)
    return plan, x


@settings(max_examples=30, deadline=None)
@given(
    channels=st.sampled_from([16, 64, 70, 128]),
    size=st.integers(5, 13),
    conv=st.sampled_from([(3, 1), (3, 2), (5, 2), (1, 1)]),
    pool_kernel=st.integers(1, 4),
    pool_stride=st.integers(1, 5),
    pad_fraction=st.integers(0, 2),
    ceil_mode=st.booleans(),
    batch=st.integers(1, 3),
    threads=st.sampled_from([1, 2]),
    with_bits=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_fused_conv_maxpool_equals_the_unfused_ops(channels, size, conv, pool_kernel,
                                                   pool_stride, pad_fraction, ceil_mode, batch,
                                                   threads, with_bits, seed):
    rng = np.random.default_rng(seed)
    plan, x = case(rng, channels, (size, size + 2), *conv, batch)
    padding = min(pad_fraction, pool_kernel // 2)
    out_hw = tuple(pool_output_size(n, pool_kernel, pool_stride, padding, 1, ceil_mode)
                   for n in plan.out_hw)
    if min(out_hw) < 1:
        return
    slope = np.zeros(channels, np.float32)  # ReLU as PReLU(0): -0.0 below zero, +0/-0 ties
    epilogue = make_epilogue(channels, scale=rng.uniform(0.5, 2, channels).astype(np.float32),
                             bias=rng.standard_normal(channels).astype(np.float32),
                             prelu=slope)
    quantize = None
    if with_bits:
        quantize = (rng.standard_normal(channels).astype(np.float32),
                    rng.choice(np.array([-1, 1], np.int8), channels))
    kernel, stride, pad = (pool_kernel,) * 2, (pool_stride,) * 2, (padding,) * 2
    fused_plan = prepare_conv_maxpool(plan, kernel, stride, pad, out_hw)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        want_floats, want_bits = unfused(plan, x, epilogue, kernel, stride, pad, ceil_mode,
                                         quantize)
        got = conv2d_maxpool(fused_plan, x, epilogue,
                             make_epilogue(channels, quantize=quantize) if with_bits else None)
    finally:
        numba.set_num_threads(previous)
    floats, bits = got if with_bits else (got, None)
    assert floats.shape == want_floats.shape == (batch, *out_hw, channels)
    np.testing.assert_array_equal(floats.view(np.uint32), want_floats.view(np.uint32))
    if with_bits:
        np.testing.assert_array_equal(bits, want_bits)


def test_nan_in_the_conv_output_is_skipped_as_the_max_pool_op_does():
    rng = np.random.default_rng(3)
    plan, x = case(rng, 64, (9, 9), 3, 1, 1)
    x[0, 4, 4, 1] = np.nan  # a 3x3 block of NaN conv outputs, in every channel
    epilogue = make_epilogue(64)
    kernel, stride, pad = (3, 3), (1, 1), (1, 1)
    fused = prepare_conv_maxpool(plan, kernel, stride, pad, (9, 9))
    want, _ = unfused(plan, x, epilogue, kernel, stride, pad, False, None)
    got = conv2d_maxpool(fused, x, epilogue)
    assert np.isnan(conv2d(plan, x, epilogue)).any() and not np.isnan(want).any()
    np.testing.assert_array_equal(got, want)


def test_only_the_direct_conv_path_fuses():
    rng = np.random.default_rng(4)
    deep = prepare_conv2d(rng.standard_normal((8, 64, 3, 3)).astype(np.float32), 64, (6, 6),
                          1, 1)  # K = 576 > 512: im2col + BLAS
    depthwise = prepare_conv2d(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), 8,
                               (6, 6), 1, 1, groups=8)
    direct = prepare_conv2d(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), 8, (6, 6),
                            1, 1)
    assert prepare_conv_maxpool(deep, 2, 2, 0, (3, 3)) is None
    assert prepare_conv_maxpool(depthwise, 2, 2, 0, (3, 3)) is None
    assert prepare_conv_maxpool(direct, 2, 2, 0, (3, 3)) is not None


def test_the_conv_epilogue_cannot_quantize_and_quantize_must_match():
    rng = np.random.default_rng(5)
    plan, x = case(rng, 64, (6, 6), 3, 1, 1)
    fused = prepare_conv_maxpool(plan, 2, 2, 0, (3, 3))
    threshold = np.zeros(64, np.float32)
    with pytest.raises(InputError, match="cannot quantize"):
        conv2d_maxpool(fused, x, make_epilogue(64, quantize=(threshold, None)))
    with pytest.raises(InputError, match="quantizing epilogue of 64"):
        conv2d_maxpool(fused, x, make_epilogue(64), make_epilogue(64))


def test_signed_zero_ties_keep_the_first_tap_as_the_max_pool_op_does():
    """scale 0 and bias -0.0 make every conv output +0 or -0 (the sign of the conv's sum):
    of equal values the fold keeps the first tap's, so the signs of the pooled zeros follow
    the tap order, in the whole words and in the partial one."""
    rng = np.random.default_rng(6)
    plan, x = case(rng, 70, (8, 8), 3, 1, 2)
    epilogue = make_epilogue(70, scale=np.zeros(70, np.float32),
                             bias=np.full(70, -0.0, np.float32))
    kernel, stride, pad = (3, 3), (2, 2), (1, 1)
    fused = prepare_conv_maxpool(plan, kernel, stride, pad, (4, 4))
    want, _ = unfused(plan, x, epilogue, kernel, stride, pad, False, None)
    got = conv2d_maxpool(fused, x, epilogue)
    signs = np.signbit(want)
    assert signs.any() and not signs.all() and not want.any()
    np.testing.assert_array_equal(np.signbit(got), signs)


def test_a_pool_window_taller_than_the_conv_output():
    """Padding lets a window exceed the conv output (kernel 5 on 2 rows): the ring holds the
    clipped window's rows only, and the result is still the op's."""
    rng = np.random.default_rng(7)
    plan, x = case(rng, 64, (4, 9), 3, 2, 2)  # conv output 2 x 5
    epilogue = make_epilogue(64)
    kernel, stride, pad = (5, 5), (1, 1), (2, 2)
    out_hw = tuple(pool_output_size(n, 5, 1, 2, 1, False) for n in plan.out_hw)
    fused = prepare_conv_maxpool(plan, kernel, stride, pad, out_hw)
    want, _ = unfused(plan, x, epilogue, kernel, stride, pad, False, None)
    np.testing.assert_array_equal(conv2d_maxpool(fused, x, epilogue), want)
