"""Binary kernels (popcount, pack_bits, bconv2d, bdense) against slow numpy references.

The references never touch the packed kernels: they pack with ``np.packbits`` and convolve
the +-1 tensors with einsum over sliding windows, padding with 0, +1 or -1.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import njit
from numpy.lib.stride_tricks import sliding_window_view

from runtime.errors import InputError, InvalidModelError
from runtime.kernels import (
    BConvCall,
    BDenseCall,
    bconv2d,
    bdense,
    make_epilogue,
    pack_bits,
    pack_bits_per_sample,
    popcount64,
    prepare_bconv,
    prepare_bdense,
)
from runtime.kernels import bconv as bconv_module

CHANNELS = st.sampled_from([1, 2, 63, 64, 65, 130])
# every popcount strategy runs on every host (runtime.kernels.bconv): test each explicitly
POPCOUNTS = pytest.mark.parametrize("popcount", ["vpopcntdq", "avx2"])


def naive_pack(plus_minus: np.ndarray) -> np.ndarray:
    """+-1 array [..., C] -> uint64 [..., ceil(C/64)], bit j of word w = channel 64w + j."""
    channels = plus_minus.shape[-1]
    padded = np.zeros((*plus_minus.shape[:-1], -(-channels // 64) * 64), bool)
    padded[..., :channels] = plus_minus > 0
    return np.packbits(padded, axis=-1, bitorder="little").view("<u8").astype(np.uint64)


def naive_unpack(bits: np.ndarray, channels: int) -> np.ndarray:
    """uint64 [..., Cw] -> +-1 int64 [..., channels] (padding bits dropped)."""
    flat = np.unpackbits(bits.astype("<u8").view(np.uint8), axis=-1, bitorder="little")
    return flat[..., :channels].astype(np.int64) * 2 - 1


def naive_conv(a, w, stride, padding, pad_value):
    """+-1 a [N, H, W, C], w [O, kh, kw, C] -> int64 [N, OH, OW, O], padding filled."""
    (sh, sw), (ph, pw) = stride, padding
    padded = np.pad(a, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    windows = sliding_window_view(padded, w.shape[1:3], axis=(1, 2))[:, ::sh, ::sw]
    return np.einsum("nyxcij,oijc->nyxo", windows, w)


def random_pm(rng, shape) -> np.ndarray:
    return rng.choice(np.array([-1, 1], np.int64), size=shape)


@njit
def _popcount_all(words, out):
    for i in range(words.shape[0]):
        out[i] = popcount64(words[i])


def test_popcount_counts_set_bits():
    words = np.array([0, 1, 2**63, 2**64 - 1, 0x5555555555555555, 12345678901234567],
                     np.uint64)
    out = np.empty(words.shape, np.uint64)
    _popcount_all(words, out)
    assert out.tolist() == [bin(int(v)).count("1") for v in words]


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 5), channels=CHANNELS, seed=st.integers(0, 2**31))
def test_pack_bits_matches_comparison_with_ties(rows, channels, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (rows, channels)).astype(np.float32)  # many exact ties
    threshold = rng.integers(-2, 3, channels).astype(np.float32)
    sign = rng.choice(np.array([-1, 1], np.int8), channels)
    expected = np.where(sign * x >= sign * threshold, 1, -1)
    got = pack_bits(x, threshold, sign)
    assert got.shape == (rows, -(-channels // 64))
    np.testing.assert_array_equal(got, naive_pack(expected))


@pytest.mark.parametrize("channels", [64, 128, 130])
def test_pack_bits_whole_words_handle_nan_and_infinities(channels):
    """Whole 64-channel words take the vector-compare path: NaN compares false (-1), as the
    scalar path of a partial word does; +-inf compare as numbers."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((3, channels)).astype(np.float32)
    x[0, ::7] = np.nan
    x[1, ::5] = np.inf
    x[2, ::3] = -np.inf
    threshold = rng.standard_normal(channels).astype(np.float32)
    sign = rng.choice(np.array([-1, 1], np.int8), channels)
    with np.errstate(invalid="ignore"):
        expected = np.where(sign * x >= sign * threshold, 1, -1)
    np.testing.assert_array_equal(pack_bits(x, threshold, sign), naive_pack(expected))


def test_pack_bits_tie_goes_to_plus_one_for_both_signs():
    x = np.array([[0.5, 0.5, -0.0, 0.0]], np.float32)
    threshold = np.array([0.5, 0.5, 0.0, -0.0], np.float32)
    sign = np.array([1, -1, 1, -1], np.int8)
    np.testing.assert_array_equal(naive_unpack(pack_bits(x, threshold, sign), 4), [[1, 1, 1, 1]])


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 3), positions=st.integers(1, 4), channels=CHANNELS,
       seed=st.integers(0, 2**31))
def test_pack_bits_per_sample_uses_each_samples_threshold(n, positions, channels, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, positions, channels)).astype(np.float32)
    threshold = rng.integers(-2, 3, (n, channels)).astype(np.float32)
    expected = np.where(x >= threshold[:, None, :], 1, -1)
    np.testing.assert_array_equal(pack_bits_per_sample(x, threshold), naive_pack(expected))


def test_pack_bits_rejects_bad_arguments():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(InputError, match="float32"):
        pack_bits(x.astype(np.float64), np.zeros(3, np.float32))
    with pytest.raises(InvalidModelError, match=r"float32\[3\]"):
        pack_bits(x, np.zeros(4, np.float32))
    with pytest.raises(InvalidModelError, match="sign"):
        pack_bits(x, np.zeros(3, np.float32), np.array([1, 0, -1], np.int8))
    with pytest.raises(InputError, match=r"float32\[2, 3\]"):
        pack_bits_per_sample(x[None], np.zeros((2, 3), np.float32))


@POPCOUNTS
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    in_channels=CHANNELS,
    out_channels=st.sampled_from([1, 3, 64, 70, 130]),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)) | st.just((5, 5)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    hw=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    pad_value=st.sampled_from([0, 1, -1]),
    seed=st.integers(0, 2**31),
)
def test_bconv2d_is_exact(popcount, batch, in_channels, out_channels, kernel, stride, padding,
                          hw, pad_value, seed):
    assume(all(s + 2 * p >= k for s, p, k in zip(hw, padding, kernel)))
    rng = np.random.default_rng(seed)
    a = random_pm(rng, (batch, *hw, in_channels))
    w = random_pm(rng, (out_channels, *kernel, in_channels))
    plan = prepare_bconv(naive_pack(w), in_channels, hw, kernel, stride, padding, pad_value,
                         popcount=popcount)
    assert plan.popcount == popcount
    got = bconv2d(plan, naive_pack(a))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, naive_conv(a, w, stride, padding, pad_value))


@POPCOUNTS
@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 2),
    in_channels=CHANNELS,
    shares=st.sampled_from([2, 4]),
    words_per_share=st.integers(1, 2),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 1), st.integers(0, 1)),
    hw=st.tuples(st.integers(1, 5), st.integers(1, 9)),
    pad_value=st.sampled_from([0, 1, -1]),
    seed=st.integers(0, 2**31),
)
def test_bconv2d_channel_shares_are_exact(popcount, batch, in_channels, shares,
                                          words_per_share, kernel, stride, padding, hw,
                                          pad_value, seed):
    """Row tasks split into ``shares`` shares of the output channels (what
    ``channel_splits`` picks for few rows on several threads; forced here, so the path runs
    on any core count) give the raw sums of the reference, and through a whole epilogue
    (affine, shortcut, RPReLU, floats kept beside the bits) the unsplit call's floats and
    bits."""
    assume(all(s + 2 * p >= k for s, p, k in zip(hw, padding, kernel)))
    rng = np.random.default_rng(seed)
    out_channels = shares * words_per_share * 64
    a = random_pm(rng, (batch, *hw, in_channels))
    w = random_pm(rng, (out_channels, *kernel, in_channels))
    plan = prepare_bconv(naive_pack(w), in_channels, hw, kernel, stride, padding, pad_value,
                         popcount=popcount)
    a_bits = naive_pack(a)
    expected = naive_conv(a, w, stride, padding, pad_value)

    def vector(low=0.5, high=1.5):
        return rng.uniform(low, high, out_channels).astype(np.float32)

    epilogue = make_epilogue(out_channels, scale=vector(), bias=vector(-1, 1),
                             rprelu=(vector(-1, 1), vector(-1, 1), vector(0, 1)),
                             quantize=(vector(-2, 2), None), keep_float=True)
    shortcut = rng.standard_normal(expected.shape).astype(np.float32)
    whole = bconv2d(plan, a_bits, epilogue, residual=shortcut)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bconv_module, "channel_splits", lambda rows, channels, threads: shares)
        np.testing.assert_array_equal(bconv2d(plan, a_bits), expected)
        floats, bits = bconv2d(plan, a_bits, epilogue, residual=shortcut)
        into = shortcut.copy()  # the output written over its own residual (runtime.graph)
        over, over_bits = bconv2d(plan, a_bits, epilogue, residual=into, out=into)
    np.testing.assert_array_equal(floats.view(np.uint32), whole[0].view(np.uint32))
    np.testing.assert_array_equal(bits, whole[1])
    assert over is into
    np.testing.assert_array_equal(over.view(np.uint32), whole[0].view(np.uint32))
    np.testing.assert_array_equal(over_bits, whole[1])


@POPCOUNTS
def test_bconv2d_zero_padding_counts_only_taps_inside_the_image(popcount):
    a = np.ones((1, 1, 1, 5), np.int64)  # a single pixel: every tap but the centre is padding
    w = np.ones((1, 3, 3, 5), np.int64)
    for pad_value, expected in ((0, 5), (1, 45), (-1, -35)):
        plan = prepare_bconv(naive_pack(w), 5, (1, 1), 3, 1, 1, pad_value, popcount=popcount)
        assert bconv2d(plan, naive_pack(a)).item() == expected


@POPCOUNTS
@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 3), features=CHANNELS,
       out_features=st.sampled_from([1, 5, 65, 128, 512]), seed=st.integers(0, 2**31))
def test_bdense_is_exact(popcount, batch, features, out_features, seed):
    rng = np.random.default_rng(seed)
    a = random_pm(rng, (batch, features))
    w = random_pm(rng, (out_features, features))
    got = bdense(prepare_bdense(naive_pack(w), features, popcount=popcount), naive_pack(a))
    np.testing.assert_array_equal(got, a @ w.T)


def test_bound_bdense_call_serves_any_batch_and_rejects_what_bdense_rejects():
    rng = np.random.default_rng(5)
    w = random_pm(rng, (65, 70))
    plan = prepare_bdense(naive_pack(w), 70)
    call = BDenseCall(plan, make_epilogue(65))
    for batch in (3, 1):
        a = random_pm(rng, (batch, 70))
        np.testing.assert_array_equal(call(naive_pack(a)), a @ w.T)
    with pytest.raises(InputError, match=r"uint64\[N, 2\]"):
        call(np.zeros((1, 3), np.uint64))
    with pytest.raises(InputError, match="not both"):
        BDenseCall(plan, make_epilogue(65, quantize=(np.zeros(65, np.float32), None),
                                       keep_float=True))


def test_prepare_bconv_rejects_inconsistent_weights():
    good = np.zeros((4, 3, 3, 2), np.uint64)
    with pytest.raises(InvalidModelError, match=r"uint64\[O, 3, 3, 1\]"):
        prepare_bconv(good, 64, (5, 5), 3)
    with pytest.raises(InvalidModelError, match="padding bits"):
        prepare_bconv(good + np.uint64(2**63), 65, (5, 5), 3)
    with pytest.raises(InvalidModelError, match="pad_value"):
        prepare_bconv(good, 65, (5, 5), 3, pad_value=2)
    with pytest.raises(InvalidModelError, match="empty output"):
        prepare_bconv(good, 65, (2, 2), 3)
    with pytest.raises(InvalidModelError, match="stride"):
        prepare_bconv(good, 65, (5, 5), 3, stride=0)
    with pytest.raises(InvalidModelError, match="padding"):
        prepare_bconv(good, 65, (5, 5), 3, padding=None)


def test_bconv2d_rejects_wrong_activations():
    plan = prepare_bconv(np.zeros((4, 3, 3, 2), np.uint64), 65, (5, 5), 3, 1, 1)
    with pytest.raises(InputError, match=r"uint64\[N, 5, 5, 2\]"):
        bconv2d(plan, np.zeros((1, 5, 5, 1), np.uint64))
    with pytest.raises(InputError, match="residual"):
        bconv2d(plan, np.zeros((1, 5, 5, 2), np.uint64),
                residual=np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(InputError, match="out must be"):
        bconv2d(plan, np.zeros((1, 5, 5, 2), np.uint64), out=np.zeros((1, 5, 5, 4), np.float64))
    keep = make_epilogue(4, quantize=(np.zeros(4, np.float32), None), keep_float=True)
    frozen = np.zeros((1, 5, 5, 4), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(InputError, match="writeable C-contiguous float32"):
        bconv2d(plan, np.zeros((1, 5, 5, 2), np.uint64), keep, out=frozen)


@POPCOUNTS
def test_bound_bconv_call_serves_any_batch_and_leaves_its_input(popcount):
    """A ``BConvCall`` (what an execution plan holds per step) gives the naive conv for batch
    sizes after one another, with +1 padding written into its own copy: the caller's input
    keeps its words; a strided input view is read as its values; bad input is rejected."""
    rng = np.random.default_rng(11)
    w = random_pm(rng, (64, 3, 3, 70))
    plan = prepare_bconv(naive_pack(w), 70, (6, 5), 3, 1, 1, 1, popcount=popcount)
    call = BConvCall(plan, make_epilogue(64))
    for batch in (2, 1, 3):
        a = random_pm(rng, (batch, 6, 5, 70))
        bits = naive_pack(a)
        before = bits.copy()
        np.testing.assert_array_equal(call(bits), naive_conv(a, w, (1, 1), (1, 1), 1))
        np.testing.assert_array_equal(bits, before)
    wide = random_pm(rng, (2, 6, 10, 70))
    np.testing.assert_array_equal(call(naive_pack(wide)[:, :, ::2]),
                                  naive_conv(wide[:, :, ::2], w, (1, 1), (1, 1), 1))
    with pytest.raises(InputError, match=r"uint64\[N, 6, 5, 2\]"):
        call(np.zeros((1, 5, 6, 2), np.uint64))
    with pytest.raises(InputError, match="epilogue is for 3 channels"):
        BConvCall(plan, make_epilogue(3))


@POPCOUNTS
def test_bconv2d_threads_share_nothing(popcount):
    """Every thread keeps its own accumulators: all threads give the one-thread result."""
    rng = np.random.default_rng(7)
    a = random_pm(rng, (3, 9, 8, 70))
    w = random_pm(rng, (66, 3, 3, 70))
    plan = prepare_bconv(naive_pack(w), 70, (9, 8), 3, 1, 1, 0, popcount=popcount)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = bconv2d(plan, naive_pack(a))
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        np.testing.assert_array_equal(bconv2d(plan, naive_pack(a)), single)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(single, naive_conv(a, w, (1, 1), (1, 1), 0))
