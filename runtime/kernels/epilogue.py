"""The fused output transform every conv/dense kernel applies before it writes a pixel.

For output channel o of one pixel, with ``acc`` the layer's raw result (exact integer for
binary layers):

    y = acc * scale[o] + bias[o]                        affine: folded BN, alpha_o, conv bias
    y = y + residual[o]                                 optional shortcut (float, same shape)
    y = y - gamma[o] + zeta[o]          if y >= gamma[o]    RPReLU (ReActNet); PReLU is the
    y = beta[o] * (y - gamma[o]) + zeta[o]  otherwise        case gamma = zeta = 0, beta = slope
    bit = sign[o] * y >= sign[o] * threshold[o]         optional quantize -> packed bits
                                                        (with ``keep_float``, the floats too)

Every step is evaluated in float32 in exactly the order of the unfused ops of docs/IR.md
(``affine``, ``add``, ``rprelu``/``prelu``, ``quantize``; no FMA contraction), so fusing
changes no bit of the result. The per-channel parameters live in one float32 table [7, O] so
all layers share one compiled kernel specialization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from runtime.errors import InputError, InvalidModelError
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
from runtime.kernels.pack import WORD_BITS, pack_at, signed_threshold_table, words_for

ACT_NONE, ACT_RPRELU = 0, 1


@dataclass(frozen=True)
class Epilogue:
    """Per-channel parameters of the fused output transform (build it with ``make_epilogue``).

    ``table`` f32[7, O] rows: scale, bias, gamma, zeta, beta, sign, sign*threshold.
    ``activation``: ACT_NONE or ACT_RPRELU. ``quantize``: output packed bits instead of float;
    ``keep_float`` (with ``quantize``): output both, the floats and their bits (a block output
    that feeds the next binary layer and a shortcut). Kernels that take it: ``bconv2d``.
    """

    channels: int
    table: np.ndarray
    activation: int
    quantize: bool
    keep_float: bool = False

    def output_last_dim(self) -> int:
        """Size of the output's last axis: O floats, or ceil(O/64) words when quantizing."""
        return words_for(self.channels) if self.quantize else self.channels


def _channel_vector(value, channels: int, role: str, allow_scalar: bool = False) -> np.ndarray:
    array = np.asarray(value)
    if allow_scalar and array.shape == (1,):
        array = np.broadcast_to(array, (channels,))
    if array.shape != (channels,) or array.dtype != np.float32:
        raise InvalidModelError(
            f"epilogue {role} must be float32[{channels}]"
            f"{' (or float32[1])' if allow_scalar else ''}, got {array.dtype}{list(array.shape)}. "
            "Re-export the model with binarize.pack."
        )
    return array


def make_epilogue(
    channels: int,
    *,
    scale: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    prelu: np.ndarray | None = None,
    rprelu: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    quantize: tuple[np.ndarray, np.ndarray | None] | None = None,
    keep_float: bool = False,
) -> Epilogue:
    """Build the fused output transform of a layer with ``channels`` outputs.

    scale, bias: f32[O] (default 1 and 0). prelu: slope f32[O] or f32[1]. rprelu: (gamma, zeta,
    beta), each f32[O]. quantize: (threshold f32[O], sign int8[O] of +-1 or None for +1); when
    given the kernel writes packed bits uint64[..., ceil(O/64)] instead of float32[..., O], and
    with ``keep_float`` both (the result is then the pair (floats, bits)).
    Raises InvalidModelError on a parameter of the wrong dtype or shape, or ``keep_float``
    without ``quantize``.
    """
    if keep_float and quantize is None:
        raise InvalidModelError("an epilogue keeps its floats beside bits only when it quantizes.")
    if prelu is not None and rprelu is not None:
        raise InvalidModelError("an epilogue takes one activation: prelu or rprelu, not both.")
    table = np.zeros((7, channels), np.float32)
    table[SCALE] = 1.0 if scale is None else _channel_vector(scale, channels, "scale")
    if bias is not None:
        table[BIAS] = _channel_vector(bias, channels, "bias")
    activation = ACT_NONE
    if prelu is not None:
        table[BETA] = _channel_vector(prelu, channels, "prelu weight", allow_scalar=True)
        activation = ACT_RPRELU
    if rprelu is not None:
        for row, role, value in zip((GAMMA, ZETA, BETA), ("gamma", "zeta", "beta"), rprelu):
            table[row] = _channel_vector(value, channels, f"rprelu {role}")
        activation = ACT_RPRELU
    table[SIGN] = 1.0
    if quantize is not None:
        table[SIGN], table[SIGNED_THRESHOLD] = signed_threshold_table(*quantize, channels)
    return Epilogue(channels, table, activation, quantize is not None, keep_float)


@njit(cache=True, inline="always")
def finish_rows(s, count, first, start, channels, residual, table, activation, quantize,
                out_float, out_bits):
    """Apply the epilogue to ``count`` pixels and store them.

    Pixel i (< count) is row ``first + i`` of the layer's outputs; its values before the
    affine are s[i, :channels] (float32 scratch, may be overwritten), the layer's channels
    ``start .. start + channels`` (``start`` a multiple of 64 when they are a share of the
    layer's channels, else 0); ``table`` is the layer's f32[7, O]. ``residual`` and
    ``out_float`` are the layer's float32 rows [M, O] or [0, 0] (none), ``out_bits`` its
    uint64 rows [M, ceil(O/64)] or [0, 0]. Floats are written when ``out_float`` is given,
    bits when ``quantize`` (both for a ``keep_float`` epilogue).

    Every array is read by index, none through per-pixel views: an array view (or an array
    handed to an inlined helper inside the pixel loop) costs a reference count update, an
    NRT call with an atomic add, whenever numba cannot prove it redundant, and the seven
    views of the former per-pixel epilogue made a 64-channel pixel 3x slower than its
    arithmetic (measured: 66 -> 23 ns); on two threads the atomics also share a cache line.
    A share reads its columns of the whole table for the same reason: handing it a table of
    its own (a view of a [shares, 7, C] array) cost the ResNet stem 3.15 -> 3.5 ms.
    Each whole 64-channel word of a pixel is one ``epilogue_word`` (LLVM vector IR: the
    affine, residual, activation, float store and the word's bits, with no loop setup); the
    channels past the last whole word take two scalar passes (affine and residual;
    activation and store), one loop per case so that each is branch-free for the vectorizer
    (RPReLU's two sides become a blend), and their bits are packed from the stored floats.
    Both give the same bits (the same float32 operations in the same order).
    """
    has_residual = residual.shape[0] > 0
    keep = out_float.shape[0] > 0
    rprelu = activation == ACT_RPRELU
    bits_wanted = bool(quantize)
    scratch = s.ravel()
    floats = out_float.ravel()
    shortcut = residual.ravel()
    columns, out_columns, residual_columns = s.shape[1], out_float.shape[1], residual.shape[1]
    word = start // WORD_BITS
    whole = channels // WORD_BITS
    tail = whole * WORD_BITS
    column = np.uint64(start)  # unsigned: numba checks a signed computed index for
    # wraparound, which kept these loops scalar (the stem's epilogue took 8 ms, not 0.3)
    for i in range(count):
        r = first + i
        for w in range(whole):
            c = start + w * WORD_BITS
            packed = epilogue_word(scratch, i * columns + w * WORD_BITS, table, c, shortcut,
                                   r * residual_columns + c, has_residual, rprelu, floats,
                                   r * out_columns + c, keep, bits_wanted)
            if bits_wanted:
                out_bits[r, word + w] = packed
        if tail == channels:
            continue
        if has_residual:
            for o in range(tail, channels):
                c = column + np.uint64(o)
                s[i, o] = (s[i, o] * table[SCALE, c] + table[BIAS, c]) + residual[r, c]
        else:
            for o in range(tail, channels):
                c = column + np.uint64(o)
                s[i, o] = s[i, o] * table[SCALE, c] + table[BIAS, c]
        if keep:  # element loops: numba's slice assignment costs ~30 ns per call
            if rprelu:
                for o in range(tail, channels):
                    c = column + np.uint64(o)
                    out_float[r, c] = _rprelu(s[i, o], table, c)
            else:
                for o in range(tail, channels):
                    out_float[r, column + np.uint64(o)] = s[i, o]
            if bits_wanted:
                pack_at(floats, r * out_columns + start + tail, channels - tail, table, SIGN,
                        table, SIGNED_THRESHOLD, start + tail, out_bits, r, word + whole)
        else:
            if rprelu:
                for o in range(tail, channels):
                    s[i, o] = _rprelu(s[i, o], table, column + np.uint64(o))
            if bits_wanted:
                pack_at(scratch, i * columns + tail, channels - tail, table, SIGN, table,
                        SIGNED_THRESHOLD, start + tail, out_bits, r, word + whole)


@njit(cache=True, inline="always")
def finish_popcounts_rows(acc_flat, acc_columns, count, bits, s_flat, channels, row, first):
    """s[row + p, o] = f32(bits[p]) - 2 * f32(i32(accs[p, first + o])) for p < count and
    o < channels: a binary layer's exact integer sums ``bits - 2 * popcount`` as float32,
    ready for ``finish_rows``. ``acc_flat`` is the popcount rows accs u64[>= count,
    acc_columns] and ``s_flat`` the scratch s f32[>= row + count, channels], both flat (views
    made once per task, not per call); ``first`` is the output channel of s's column 0,
    nonzero for a share of the channels.

    Formed in float32 from int32 operands: the same exact integer (every operand and result
    is an integer below 2**24) as the int64 formula, but int32 -> float32 converts 8 lanes per
    vcvtdq2ps where int64 -> float32 has no AVX2 instruction (LLVM emitted one scalar
    vcvtsi2ss per channel: 38% of a 64-channel layer's time went to this conversion). The
    indices are unsigned: with signed 2-D indices numba checks each for wraparound, and the
    loop compiled to one scalar load, sign test and vpinsrd per element, 4 per vcvtdq2ps
    (35 instructions per 4 channels: 21% of a 64-channel layer's time, sampled with perf).
    """
    width = np.uint64(channels)
    for p in range(count):
        total = np.float32(bits[p])
        source = np.uint64(p) * np.uint64(acc_columns) + np.uint64(first)
        target = np.uint64(row + p) * width
        for o in range(channels):
            offset = np.uint64(o)
            s_flat[target + offset] = total - np.float32(2.0) * np.float32(
                np.int32(acc_flat[source + offset]))


@njit(cache=True, inline="always")
def _rprelu(v, table, o):
    """(v - gamma) + zeta if v >= gamma else beta * (v - gamma) + zeta (IR ``rprelu``) with
    channel o's gamma, zeta, beta from the table."""
    gamma = table[GAMMA, o]
    shifted = v - gamma
    return (shifted if v >= gamma else table[BETA, o] * shifted) + table[ZETA, o]


@njit(cache=True, parallel=True)
def _finish_rows(y, residual, table, activation, quantize, out_float, out_bits):
    """finish_rows over every row of y f32[M, O] (rows in parallel, chunks of 16)."""
    rows = y.shape[0]
    for chunk in prange(-(-rows // 16)):
        first = chunk * 16
        finish_rows(y[first:], min(16, rows - first), first, 0, table.shape[1], residual,
                    table, activation, quantize, out_float, out_bits)


def check_residual(residual: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Validate a float32 shortcut of exactly ``shape``; None -> an empty array (no shortcut)."""
    if residual is None:
        return _NO_FLOATS
    if not isinstance(residual, np.ndarray) or residual.dtype != np.float32 \
            or residual.shape != shape:
        raise InputError(
            f"residual must be float32{list(shape)} (the layer's output shape), got "
            f"{getattr(residual, 'dtype', type(residual).__name__)}"
            f"{list(getattr(residual, 'shape', []))}."
        )
    return np.ascontiguousarray(residual)


def output_buffers(
    shape: tuple[int, ...], epilogue: Epilogue, out: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(result, float target, bits target) for an output of ``shape[:-1] + [O]``.

    The unused target is an empty placeholder (``_NO_FLOATS`` or ``_NO_BITS``), so every
    call has one signature. ``out``, when given, is the result's array (the bits when the
    epilogue quantizes, else the floats); with ``keep_float`` the result is the pair
    (floats, bits), ``out`` then takes the floats and the bits are a new array.
    """
    keep = epilogue.keep_float
    dtype = np.uint64 if epilogue.quantize and not keep else np.float32
    full = (*shape[:-1], shape[-1] if keep else epilogue.output_last_dim())
    if out is None:
        out = np.empty(full, dtype)
    elif out.dtype != dtype or out.shape != full or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise InputError(
            f"out must be a writeable C-contiguous {np.dtype(dtype).name}{list(full)} array, "
            f"got {out.dtype}{list(out.shape)}."
        )
    if keep:
        bits = np.empty((*shape[:-1], words_for(epilogue.channels)), np.uint64)
        return (out, bits), out, bits
    return (out, _NO_FLOATS, out) if epilogue.quantize else (out, out, _NO_BITS)


def apply_epilogue(
    y: np.ndarray,
    epilogue: Epilogue,
    shape: tuple[int, ...],
    residual: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Run the epilogue over a float layer's raw result ``y`` f32[M, O] (used as scratch).

    ``shape`` is the layer's output shape with M = prod(shape[:-1]) (e.g. [N, OH, OW, O]);
    returns float32 ``shape`` or packed uint64 ``shape[:-1] + [ceil(O/64)]``.
    """
    residual = check_residual(residual, shape)
    result, out_float, out_bits = output_buffers(shape, epilogue, out)
    rows = y.shape[0]
    _finish_rows(y, _as_rows(residual, rows), epilogue.table, epilogue.activation,
                 epilogue.quantize, _as_rows(out_float, rows), _as_rows(out_bits, rows))
    return result


# The placeholders for an output or a shortcut a call does not have (size 0, never written;
# one 2-D array per dtype, so that every call passes the kernels the same types).
_NO_FLOATS = np.empty((0, 0), np.float32)
_NO_BITS = np.empty((0, 0), np.uint64)


def _as_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """[..., K] -> [rows, K]; a placeholder (``_NO_FLOATS``, ``_NO_BITS``) stays as it is."""
    return array.reshape(rows, -1) if array.size else array
