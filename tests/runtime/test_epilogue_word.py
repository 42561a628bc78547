"""``epilogue_word``: the 64-channel vector block of the fused epilogue, against its formula.

Every flag combination, a column offset into the table (a channel share), a value exactly
at its threshold (a tie gives bit 1), NaN (RPReLU's negative side, bit 0), and what a
cleared flag must leave alone: no store, no bits.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from runtime.kernels.epilogue_word import (
    BETA,
    BIAS,
    GAMMA,
    SCALE,
    SIGN,
    SIGNED_THRESHOLD,
    ZETA,
    epilogue_word,
)

CHANNELS = 64


@njit(cache=True)
def _call(values, base, table, column, residual, residual_base, add_residual, rprelu, out,
          out_base, store, compare):
    return epilogue_word(values, base, table, column, residual, residual_base, add_residual,
                         rprelu, out, out_base, store, compare)


def reference(values, table, column, residual, add_residual, rprelu):
    """The formula in numpy float32, one op at a time (numpy never contracts to FMA)."""
    cols = slice(column, column + CHANNELS)
    y = values * table[SCALE, cols] + table[BIAS, cols]
    if add_residual:
        y = y + residual
    if rprelu:
        gamma = table[GAMMA, cols]
        shifted = y - gamma
        with np.errstate(invalid="ignore"):
            above = y >= gamma
        y = np.where(above, shifted, table[BETA, cols] * shifted) + table[ZETA, cols]
    with np.errstate(invalid="ignore"):
        bits = y * table[SIGN, cols] >= table[SIGNED_THRESHOLD, cols]
    return y.astype(np.float32), bits


def word_of(bits):
    return int(sum(1 << j for j in range(CHANNELS) if bits[j]))


@pytest.mark.parametrize("add_residual,rprelu,store,compare",
                         list(itertools.product([False, True], repeat=4)))
def test_epilogue_word_matches_its_formula(add_residual, rprelu, store, compare):
    rng = np.random.default_rng(7)
    column = 64  # the second word of a 160-channel layer: a share's offset into the table
    table = rng.uniform(-2, 2, (7, 160)).astype(np.float32)
    table[SIGN] = rng.choice(np.array([-1.0, 1.0], np.float32), 160)
    table[BETA] = rng.uniform(0, 1, 160).astype(np.float32)
    values = np.zeros(3 * CHANNELS, np.float32)
    x = rng.standard_normal(CHANNELS).astype(np.float32) * 3
    x[5] = np.nan
    values[CHANNELS:2 * CHANNELS] = x
    residual_rows = rng.standard_normal(4 * CHANNELS).astype(np.float32)
    residual = residual_rows[2 * CHANNELS:3 * CHANNELS]
    # channel 11 lands exactly on its threshold (a tie gives bit 1)
    after, _ = reference(x, table, column, residual, add_residual, rprelu)
    table[SIGNED_THRESHOLD, column + 11] = after[11] * table[SIGN, column + 11]
    expected, bits = reference(x, table, column, residual, add_residual, rprelu)
    assert bits[11] and not bits[5]
    out = np.full(3 * CHANNELS, -7.0, np.float32)
    word = _call(values, CHANNELS, table, column, residual_rows, 2 * CHANNELS, add_residual,
                 rprelu, out, CHANNELS, store, compare)
    assert word == (word_of(bits) if compare else 0)
    untouched = np.full(CHANNELS, -7.0, np.float32)
    np.testing.assert_array_equal(out[CHANNELS:2 * CHANNELS], expected if store else untouched)
    for outside in (out[:CHANNELS], out[2 * CHANNELS:]):
        np.testing.assert_array_equal(outside, untouched)


def test_epilogue_word_rejects_other_array_types():
    values = np.zeros(CHANNELS, np.float64)
    table = np.zeros((7, CHANNELS), np.float32)
    with pytest.raises(TypingError):
        _call(values, 0, table, 0, table[0], 0, False, False, table[0], 0, False, False)
