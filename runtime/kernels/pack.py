"""Threshold-and-pack: float activations -> bits, 64 channels per uint64 word.

bit(c) = 1 (the value +1) where ``s[c] * x[c] >= s[c] * t[c]``, else 0 (the value -1): for
s = +1 that is ``x >= t`` (sign(0) = +1, the convention of every training binarizer, see
docs/OPERATORS.md), for s = -1 it is ``x <= t`` (a folded BatchNorm with a negative scale
flips the comparison). Bit j of word w holds channel 64*w + j;
bits past the last channel are 0 (docs/IR.md), so they XOR to 0 against weights packed the
same way.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.errors import InputError, InvalidModelError
from runtime.kernels.intrinsics import is_c_array, widen

WORD_BITS = 64


def words_for(channels: int) -> int:
    """Number of uint64 words holding ``channels`` bits: ceil(channels / 64)."""
    return (channels + WORD_BITS - 1) // WORD_BITS


@intrinsic
def _word_of_comparisons(typingctx, values, values_base, sign, sign_row, threshold,
                         threshold_row, base):
    """uint64 whose bit j is ``values[values_base + j] * sign[sign_row, base + j] >=
    threshold[threshold_row, base + j]`` for j < 64 (nopython only; ``values`` f32[:] C,
    ``sign`` and ``threshold`` f32[:, :] C, nothing bounds-checked).

    The parameters are read as rows of 2-D tables by index, not as row views (see
    ``pack_at``).

    As LLVM vectors: a <64 x float> multiply and ordered >= compare (NaN gives 0, as the
    scalar comparison does), then the <64 x i1> mask bitcast to i64, element j to bit j. On
    AVX2 that is vmulps + vcmpps + vmovmskps per 8 channels; the scalar loop of shifts and ORs
    it replaces cost ~1.6 cycles per channel.
    """
    if not (is_c_array(values, 1, types.float32) and is_c_array(sign, 2, types.float32)
            and is_c_array(threshold, 2, types.float32)) \
            or not all(isinstance(ty, types.Integer)
                       for ty in (values_base, sign_row, threshold_row, base)):
        return None

    def codegen(context, builder, signature, args):
        vector = ir.VectorType(ir.FloatType(), WORD_BITS)
        def load(array_type, value, offset):
            data = context.make_array(array_type)(context, builder, value).data
            pointer = builder.bitcast(builder.gep(data, [offset]), vector.as_pointer())
            return builder.load(pointer, align=4)

        def row_offset(array_type, value, row):
            columns = cgutils.unpack_tuple(
                builder, context.make_array(array_type)(context, builder, value).shape)[1]
            return builder.add(builder.mul(widen(builder, row), columns), widen(builder, args[6]))

        types_ = signature.args
        v = load(types_[0], args[0], widen(builder, args[1]))
        s = load(types_[2], args[2], row_offset(types_[2], args[2], args[3]))
        t = load(types_[4], args[4], row_offset(types_[4], args[4], args[5]))
        mask = builder.fcmp_ordered(">=", builder.fmul(v, s), t)
        return builder.bitcast(mask, ir.IntType(WORD_BITS))

    signature = types.uint64(values, types.int64, sign, types.int64, threshold, types.int64,
                             types.int64)
    return signature, codegen


@njit(cache=True, inline="always")
def pack_at(values, base, channels, sign, sign_row, threshold, threshold_row, column, out,
            row, word):
    """Pack ``channels`` values: bit c of words out[row, word:] is ``values[base + c] *
    sign[sign_row, column + c] >= threshold[threshold_row, column + c]``.

    ``threshold`` holds ``sign * threshold`` (exact: sign is +-1). Shared by the standalone
    packers below and by the fused epilogue (whose table holds both rows). Everything is
    addressed by index, so the caller's pixel loop binds no array views (each costs a
    reference count update). Whole words go through ``_word_of_comparisons`` (vector
    compares); the last partial word bit by bit.
    """
    full = channels // WORD_BITS
    for w in range(full):
        out[row, word + w] = _word_of_comparisons(values, base + w * WORD_BITS, sign, sign_row,
                                                  threshold, threshold_row,
                                                  column + w * WORD_BITS)
    if full * WORD_BITS < channels:
        first = full * WORD_BITS
        bits = np.uint64(0)
        for j in range(channels - first):
            c = np.uint64(column + first + j)  # unsigned: no wraparound check (finish_rows)
            if values[np.uint64(base + first + j)] * sign[sign_row, c] \
                    >= threshold[threshold_row, c]:
                bits |= np.uint64(1) << np.uint64(j)
        out[row, word + full] = bits


@njit(cache=True, parallel=True)
def _pack_rows(x, sign, signed_threshold, out):
    """x f32[N, P, C], sign f32[1, C], signed_threshold f32[N or 1, C] -> out uint64[N, P,
    ceil(C/64)]."""
    n_samples, n_rows, channels = x.shape
    per_sample = signed_threshold.shape[0] > 1
    values = x.ravel()
    rows = out.reshape(n_samples * n_rows, out.shape[2])
    for r in prange(n_samples * n_rows):
        n = r // n_rows
        pack_at(values, r * channels, channels, sign, 0, signed_threshold,
                n if per_sample else 0, 0, rows, r, 0)


def _sign_vector(sign: np.ndarray | None, channels: int) -> np.ndarray:
    """Validate an int8 +-1 sign vector (None = all +1) and return it as float32 [C]."""
    if sign is None:
        return np.ones(channels, np.float32)
    sign = np.asarray(sign)
    if sign.shape != (channels,) or not np.all((sign == 1) | (sign == -1)):
        raise InvalidModelError(
            f"quantize sign must hold {channels} values, each +1 or -1; got shape {sign.shape} "
            f"with values {np.unique(sign)[:5]}. Re-export the model with binarize.pack."
        )
    return sign.astype(np.float32)


def signed_threshold_table(
    threshold: np.ndarray, sign: np.ndarray | None, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a static per-channel threshold/sign pair; return (sign f32[C], sign*t f32[C])."""
    threshold = np.asarray(threshold)
    if threshold.shape != (channels,) or threshold.dtype != np.float32:
        raise InvalidModelError(
            f"quantize threshold must be float32[{channels}], got {threshold.dtype}"
            f"{list(threshold.shape)}. Re-export the model with binarize.pack."
        )
    s = _sign_vector(sign, channels)
    return s, s * threshold


def _float_input(x: np.ndarray, rank: int, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != rank:
        raise InputError(
            f"{what} must be a float32 array of rank {rank}, got "
            f"{getattr(x, 'dtype', type(x).__name__)} of rank {getattr(x, 'ndim', '?')}."
        )
    return np.ascontiguousarray(x)


def pack_bits(
    x: np.ndarray, threshold: np.ndarray, sign: np.ndarray | None = None
) -> np.ndarray:
    """Binarize and pack ``x`` f32[M, C] with a static per-channel threshold.

    bit[m, c] = ``s[c] * x[m, c] >= s[c] * threshold[c]`` (``sign`` int8[C] of +-1, default +1).
    For NHWC activations pass ``x.reshape(-1, C)`` and reshape the result to [N, H, W, -1].

    Returns uint64[M, ceil(C/64)], padding bits 0.
    """
    x = _float_input(x, 2, "pack_bits input")
    channels = x.shape[1]
    s, st = signed_threshold_table(threshold, sign, channels)
    out = np.empty((x.shape[0], words_for(channels)), np.uint64)
    _pack_rows(x.reshape(1, x.shape[0], channels), s.reshape(1, channels),
               st.reshape(1, channels), out.reshape(1, x.shape[0], -1))
    return out


def pack_bits_per_sample(
    x: np.ndarray, threshold: np.ndarray, sign: np.ndarray | None = None
) -> np.ndarray:
    """Binarize and pack ``x`` f32[N, P, C] with per-sample thresholds f32[N, C] (DySign).

    bit[n, p, c] = ``s[c] * x[n, p, c] >= s[c] * threshold[n, c]``; P is the flattened spatial
    size (H*W of an NHWC tensor, 1 for a rank-2 input). Returns uint64[N, P, ceil(C/64)].
    """
    x = _float_input(x, 3, "pack_bits_per_sample input")
    n_samples, _, channels = x.shape
    threshold = np.asarray(threshold)
    if threshold.shape != (n_samples, channels) or threshold.dtype != np.float32:
        raise InputError(
            f"per-sample thresholds must be float32[{n_samples}, {channels}] to match the input "
            f"{list(x.shape)}, got {threshold.dtype}{list(threshold.shape)}."
        )
    s = _sign_vector(sign, channels)
    out = np.empty((*x.shape[:2], words_for(channels)), np.uint64)
    _pack_rows(x, s.reshape(1, channels), np.ascontiguousarray(s * threshold), out)
    return out
