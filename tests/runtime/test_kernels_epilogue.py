"""The fused epilogue, through every kernel, against the unfused IR ops run in float32.

Fusing must change no bit: the fused result equals affine -> add -> prelu/rprelu -> quantize
applied one after another with numpy float32 arithmetic to the kernel's raw output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import InputError, InvalidModelError
from runtime.kernels import (
    bconv2d,
    bdense,
    conv2d,
    dense,
    make_epilogue,
    prepare_bconv,
    prepare_bdense,
    prepare_conv2d,
    prepare_dense,
)


def unfused(raw, scale, bias, residual, activation, quantize):
    """Reference: the IR ops one by one in float32 (numpy never contracts to FMA)."""
    y = raw * scale + bias
    if residual is not None:
        y = y + residual
    if activation is not None:
        gamma, zeta, beta = activation
        y = np.where(y >= gamma, y - gamma + zeta, beta * (y - gamma) + zeta)
    if quantize is None:
        return y
    threshold, sign = quantize
    return sign * y >= sign * threshold


def unpack(bits: np.ndarray, channels: int) -> np.ndarray:
    """uint64 [..., Cw] -> bool [..., channels]."""
    flat = np.unpackbits(bits.astype("<u8").view(np.uint8), axis=-1, bitorder="little")
    return flat[..., :channels].astype(bool)


def random_bits(rng, shape, channels):
    bits = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    spare = shape[-1] * 64 - channels
    bits[..., -1] &= np.uint64((1 << (64 - spare)) - 1)
    return bits


def layers(rng, channels_out):
    """(name, run(epilogue, residual)) for every kernel, each with O = channels_out."""
    n, hw, c_in = 2, (4, 5), 70
    bplan = prepare_bconv(random_bits(rng, (channels_out, 3, 3, 2), c_in), c_in, hw, 3, 1, 1)
    a_bits = random_bits(rng, (n, *hw, 2), c_in)
    x = rng.standard_normal((n, *hw, c_in)).astype(np.float32)
    gemm = prepare_conv2d(rng.standard_normal((channels_out, c_in, 3, 3)).astype(np.float32),
                          c_in, hw, 2, 1)
    x_dw = rng.standard_normal((n, *hw, channels_out)).astype(np.float32)
    depthwise = prepare_conv2d(rng.standard_normal((channels_out, 1, 3, 3)).astype(np.float32),
                               channels_out, hw, 1, 1, groups=channels_out)
    dplan = prepare_dense(rng.standard_normal((channels_out, c_in)).astype(np.float32))
    bdplan = prepare_bdense(random_bits(rng, (channels_out, 2), c_in), c_in)
    flat_bits = random_bits(rng, (n, 2), c_in)
    return [
        ("bconv2d", lambda e, r: bconv2d(bplan, a_bits, e, residual=r)),
        ("conv2d", lambda e, r: conv2d(gemm, x, e, residual=r)),
        ("depthwise", lambda e, r: conv2d(depthwise, x_dw, e, residual=r)),
        ("dense", lambda e, r: dense(dplan, x[:, 0, 0], e, residual=r)),
        ("bdense", lambda e, r: bdense(bdplan, flat_bits, e, residual=r)),
    ]


@settings(max_examples=12, deadline=None)
@given(
    channels=st.sampled_from([1, 64, 65, 130]),
    use_affine=st.booleans(),
    use_residual=st.booleans(),
    activation=st.sampled_from([None, "prelu", "prelu1", "rprelu"]),
    use_quantize=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_fused_epilogue_equals_unfused_ops(channels, use_affine, use_residual, activation,
                                           use_quantize, seed):
    rng = np.random.default_rng(seed)

    def vector(low=-2.0, high=2.0):
        return rng.uniform(low, high, channels).astype(np.float32)

    scale, bias = (vector(), vector()) if use_affine else (None, None)
    prelu = rprelu = act = None
    zeros = np.zeros(channels, np.float32)
    if activation == "prelu":
        prelu = vector(0, 1)
        act = (zeros, zeros, prelu)
    elif activation == "prelu1":
        prelu = np.array([0.25], np.float32)
        act = (zeros, zeros, np.full(channels, 0.25, np.float32))
    elif activation == "rprelu":
        rprelu = act = (vector(), vector(), vector(0, 1))
    for name, run in layers(rng, channels):
        raw = run(None, None)
        residual = rng.standard_normal(raw.shape).astype(np.float32) if use_residual else None
        quantize = None
        if use_quantize:
            # thresholds at actual values of the unquantized output: exact ties must give +1
            before = unfused(raw, scale if use_affine else 1, bias if use_affine else 0,
                             residual, act, None)
            threshold = before.reshape(-1, channels)[0].copy()
            quantize = (threshold, rng.choice(np.array([-1, 1], np.int8), channels))
        epilogue = make_epilogue(channels, scale=scale, bias=bias, prelu=prelu, rprelu=rprelu,
                                 quantize=quantize)
        expected = unfused(raw, scale if use_affine else 1, bias if use_affine else 0,
                           residual, act, quantize)
        got = run(epilogue, residual)
        if use_quantize:
            assert got.dtype == np.uint64, name
            np.testing.assert_array_equal(unpack(got, channels), expected, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        if not use_quantize:
            continue
        # keep_float: the floats and their bits from one call (bconv2d only; the others refuse)
        both = make_epilogue(channels, scale=scale, bias=bias, prelu=prelu, rprelu=rprelu,
                             quantize=quantize, keep_float=True)
        if name != "bconv2d":
            with pytest.raises(InputError, match="not both"):
                run(both, residual)
            continue
        floats, bits = run(both, residual)
        np.testing.assert_array_equal(floats, before, err_msg=name)
        np.testing.assert_array_equal(unpack(bits, channels), expected, err_msg=name)


def test_make_epilogue_rejects_bad_parameters():
    with pytest.raises(InvalidModelError, match=r"scale must be float32\[4\]"):
        make_epilogue(4, scale=np.ones(3, np.float32))
    with pytest.raises(InvalidModelError, match="bias"):
        make_epilogue(4, bias=np.ones(4, np.float64))
    with pytest.raises(InvalidModelError, match="not both"):
        make_epilogue(4, prelu=np.ones(4, np.float32), rprelu=(np.ones(4, np.float32),) * 3)
    with pytest.raises(InvalidModelError, match="rprelu beta"):
        make_epilogue(4, rprelu=(np.ones(4, np.float32),) * 2 + (np.ones(2, np.float32),))
    with pytest.raises(InvalidModelError, match="only when it quantizes"):
        make_epilogue(4, keep_float=True)


def test_epilogue_must_match_the_layer():
    plan = prepare_dense(np.ones((3, 2), np.float32))
    with pytest.raises(InputError, match="epilogue is for 4 channels"):
        dense(plan, np.ones((1, 2), np.float32), make_epilogue(4))
