"""The binary conv's popcount strategies ("vpopcntdq", "avx2"): both exact on any host.

Every host runs both (the "avx2" intrinsics fall back to ``llvm.ctpop.v32i8`` off AVX2), so
each is checked against the naive +-1 reference over the geometry that reaches each of its
code paths (4-, 2- and 1-pixel blocks at a row's end, ragged channel counts against the
16-channel weight blocks, every padding value, strides, kernels), against each other
through every epilogue, and the plan-time choice against the target's features.
"""

from __future__ import annotations

import numba.core.config
import numpy as np
import pytest

from runtime.errors import InvalidModelError
from runtime.kernels import bconv2d, make_epilogue, prepare_bconv, prepare_bdense
from runtime.kernels.bconv import POPCOUNT_ENV, default_popcount
from runtime.kernels.popcount import BYTE_COUNT_WORDS, target_features
from tests.runtime.test_kernels_binary import naive_conv, naive_pack, random_pm

STRATEGIES = ["vpopcntdq", "avx2"]

# (in channels, out channels, (H, W), kernel, stride, padding): output widths 1 .. 7 give
# every mix of 4-, 2- and 1-pixel blocks; 70 / 130 / 336 channels leave ragged words and
# ragged 16-channel blocks; 336 channels with a 3x3 kernel is 54 patch words (two byte-count
# groups of BYTE_COUNT_WORDS)
GEOMETRY = [
    (70, 130, (5, 7), 3, 1, 1),
    (130, 70, (6, 5), 3, 2, 1),
    (336, 336, (3, 6), 3, 1, 1),
    (70, 336, (4, 9), 1, 1, 0),
    (130, 3, (7, 3), 1, 2, 0),
    (64, 16, (2, 1), 3, 1, 1),
    (1, 17, (3, 11), 3, 1, 2),
]


@pytest.mark.parametrize("popcount", STRATEGIES)
@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("geometry", GEOMETRY, ids=lambda g: f"{g[0]}-{g[1]}-{g[2]}-k{g[3]}s{g[4]}")
def test_strategy_is_exact(popcount, pad_value, geometry):
    c_in, c_out, hw, kernel, stride, padding = geometry
    rng = np.random.default_rng(c_in * 1000 + c_out + pad_value)
    a = random_pm(rng, (2, *hw, c_in))
    w = random_pm(rng, (c_out, kernel, kernel, c_in))
    plan = prepare_bconv(naive_pack(w), c_in, hw, kernel, stride, padding, pad_value,
                         popcount=popcount)
    expected = naive_conv(a, w, (stride, stride), (padding, padding), pad_value)
    np.testing.assert_array_equal(bconv2d(plan, naive_pack(a)), expected)


@pytest.mark.parametrize("kernel,channels", [((3, 3), 256), ((1, 31), 64), ((1, 32), 64)])
def test_byte_counts_never_carry(kernel, channels):
    """All-ones XOR (every bit of every word set): the per-byte counts reach 8 * 31 = 248 in
    a group and must not overflow into the next byte; 31 patch words take the one-group
    path of the intrinsics, 32 and 36 the groups loop (31 words, then the rest)."""
    kh, kw = kernel
    a = -np.ones((1, kh, kw + 1, channels), np.int64)
    w = np.ones((20, kh, kw, channels), np.int64)
    words = kh * kw * channels // 64
    assert words >= BYTE_COUNT_WORDS
    plan = prepare_bconv(naive_pack(w), channels, (kh, kw + 1), kernel, 1, 0, popcount="avx2")
    np.testing.assert_array_equal(bconv2d(plan, naive_pack(a)), -kh * kw * channels)


def _epilogues(rng, channels):
    def vector(low=-2.0, high=2.0):
        return rng.uniform(low, high, channels).astype(np.float32)

    return {
        "none": make_epilogue(channels),
        "affine": make_epilogue(channels, scale=vector(), bias=vector()),
        "prelu": make_epilogue(channels, scale=vector(), prelu=vector(0, 1)),
        "rprelu": make_epilogue(channels, bias=vector(), rprelu=(vector(), vector(),
                                                                 vector(0, 1))),
        "quantize": make_epilogue(channels, scale=vector(), bias=vector(),
                                  quantize=(vector(-20, 20),
                                            rng.choice(np.array([-1, 1], np.int8), channels))),
    }


@pytest.mark.parametrize("residual", [False, True])
def test_strategies_agree_through_every_epilogue(residual):
    rng = np.random.default_rng(3)
    c_in, c_out, hw = 130, 70, (5, 7)
    w_bits = naive_pack(random_pm(rng, (c_out, 3, 3, c_in)))
    a_bits = naive_pack(random_pm(rng, (2, *hw, c_in)))
    plans = {name: prepare_bconv(w_bits, c_in, hw, 3, 1, 1, 0, popcount=name)
             for name in STRATEGIES}
    shortcut = rng.standard_normal((2, *hw, c_out)).astype(np.float32) if residual else None
    for name, epilogue in _epilogues(rng, c_out).items():
        first, second = (bconv2d(plans[s], a_bits, epilogue, residual=shortcut)
                         for s in STRATEGIES)
        assert first.dtype == second.dtype, name
        np.testing.assert_array_equal(first, second, err_msg=name)


@pytest.mark.parametrize("popcount", STRATEGIES)
def test_bdense_strategies_are_exact(popcount):
    rng = np.random.default_rng(5)
    a = random_pm(rng, (3, 336))
    w = random_pm(rng, (70, 336))
    plan = prepare_bdense(naive_pack(w), 336, popcount=popcount)
    assert plan.popcount == popcount
    np.testing.assert_array_equal(bconv2d(plan, naive_pack(a)[:, None, None, :])[:, 0, 0],
                                  a @ w.T)


def test_avx2_plan_layout():
    """avx2 weights: blocks of 16 channels, per patch word the low nibbles then the high."""
    w_bits = np.arange(1, 1 + 20 * 3 * 3 * 2, dtype=np.uint64).reshape(20, 3, 3, 2) * np.uint64(
        0x1111)
    plan = prepare_bconv(w_bits, 128, (4, 4), 3, 1, 1, popcount="avx2")
    assert plan.popcount == "avx2"
    assert plan.weights.shape == (2, 18 * 2 * 16)  # ceil(20 / 16) blocks, 18 patch words
    assert plan.weights.ctypes.data % 64 == 0
    rows = plan.weights.reshape(2, 18, 2, 16)
    word = w_bits[17, 1, 2, 1]  # channel 17 = block 1, lane 1; patch word (1 * 3 + 2) * 2 + 1
    assert rows[1, 11, 0, 1] == word & np.uint64(0x0F0F0F0F0F0F0F0F)
    assert rows[1, 11, 1, 1] == (word >> np.uint64(4)) & np.uint64(0x0F0F0F0F0F0F0F0F)
    assert not rows[1, :, :, 4:].any()  # channels 20 .. 31 are zero padding


@pytest.mark.parametrize(("features", "out_hw", "expected"), [
    ("+avx2,-avx512vpopcntdq", (7, 7), "avx2"),
    ("+avx,+avx2", (1, 2), "avx2"),
    ("+avx2,+avx512f,+avx512vpopcntdq", (7, 7), "vpopcntdq"),
    ("+sse4.2,-avx2", (7, 7), "vpopcntdq"),
    ("+neon", (7, 7), "vpopcntdq"),
    ("+avx2,-avx512vpopcntdq", (1, 1), "vpopcntdq"),  # dense-like: weights read once
])
def test_default_follows_the_target_features(monkeypatch, features, out_hw, expected):
    monkeypatch.delenv(POPCOUNT_ENV, raising=False)
    monkeypatch.setattr(numba.core.config, "CPU_FEATURES", features)
    assert default_popcount(out_hw) == expected
    w_bits = np.zeros((3, 1, 1, 1), np.uint64)
    assert prepare_bconv(w_bits, 64, out_hw, 1).popcount == expected


def test_target_features_read_numba_settings(monkeypatch):
    monkeypatch.setattr(numba.core.config, "CPU_FEATURES", "+avx2, -avx512vpopcntdq,+popcnt")
    assert target_features() == {"avx2": True, "avx512vpopcntdq": False, "popcnt": True}
    monkeypatch.setattr(numba.core.config, "CPU_FEATURES", None)  # the host's
    assert target_features()  # llvmlite lists every feature it knows, + or -


def test_override_by_environment_and_keyword(monkeypatch):
    w_bits = np.zeros((3, 3, 3, 1), np.uint64)
    for name in STRATEGIES:
        monkeypatch.setenv(POPCOUNT_ENV, name)
        assert default_popcount((1, 1)) == name
        assert prepare_bconv(w_bits, 64, (5, 5), 3).popcount == name
        assert prepare_bdense(np.zeros((3, 1), np.uint64), 64).popcount == name
        other = STRATEGIES[1 - STRATEGIES.index(name)]
        assert prepare_bconv(w_bits, 64, (5, 5), 3, popcount=other).popcount == other
    monkeypatch.setenv(POPCOUNT_ENV, "sse")
    with pytest.raises(InvalidModelError, match=POPCOUNT_ENV):
        prepare_bconv(w_bits, 64, (5, 5), 3)
    monkeypatch.delenv(POPCOUNT_ENV)
    with pytest.raises(InvalidModelError, match="popcount must be one of"):
        prepare_bconv(w_bits, 64, (5, 5), 3, popcount="avx512")
