"""Binary 2-D convolution on packed bits: direct, NHWC, fused epilogue.

For +-1 input a (channels packed 64 per uint64 word) and +-1 weights w, output channel o at
output pixel (y, x) is

    acc[o] = sum over taps (ky, kx) whose input pixel lies inside the image of
             (C - 2 * popcount(a[iy, ix, :] XOR w[o, ky, kx, :]))
           + pad_value * sum over taps in the padding of sum_c w[o, ky, kx, c]

which is exactly ``F.conv2d`` of the +-1 tensors with padding filled by ``pad_value``
(0, +1 or -1). Zero padding (what PyTorch and Larq Compute Engine compute) costs nothing
here: a direct convolution simply skips the taps that fall into the padding and counts the
valid ones, instead of correcting an im2col that had to put a bit there. +-1 padding adds the
tap's precomputed weight sum (2 * popcount(w) - C) per padded tap.

Loop order (DESIGN.md): (batch, output row) in ``prange`` -> output column -> kernel row ->
the contiguous run of (kernel column, input word) of that row -> output channels innermost,
accumulating into a small int64 array. The weights are re-laid out at plan time to
[kh, kw * Cw, O] (output channels contiguous) so the innermost loop is a broadcast word XOR a
contiguous weight vector, popcount, add: LLVM vectorizes it (``vpopcntq`` with AVX-512
VPOPCNTDQ, ``vpshufb``/``vpsadbw`` with AVX2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from runtime.errors import InputError, InvalidModelError
from runtime.kernels.epilogue import (
    Epilogue,
    check_residual,
    finish_pixel,
    make_epilogue,
    output_buffers,
)
from runtime.kernels.pack import words_for
from runtime.kernels.popcount import popcount64


@dataclass(frozen=True)
class BConvPlan:
    """A binary convolution prepared for one input size (see ``prepare_bconv``).

    ``weights`` uint64[kh, kw * Cw, O]: row ky, word (kx * Cw + w), output channel o.
    ``tap_sums`` int64[kh, kw, O]: sum over channels of the +-1 weights of each tap.
    """

    in_channels: int
    out_channels: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: int
    weights: np.ndarray
    tap_sums: np.ndarray


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < minimum for v in pair):
        raise InvalidModelError(
            f"binary conv {name} must be an int or a pair of ints >= {minimum}, got {value!r}."
        )
    return int(pair[0]), int(pair[1])


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """PyTorch's output size of a convolution along one axis (dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


def padding_bits_clear(bits: np.ndarray, channels: int) -> bool:
    """True when every bit past ``channels`` in the last word of ``bits`` [..., Cw] is 0."""
    spare = words_for(channels) * 64 - channels
    if spare == 0:
        return True
    mask = np.uint64(((1 << spare) - 1) << (64 - spare))
    return not np.any(bits[..., -1] & mask)


def prepare_bconv(
    weight_bits: np.ndarray,
    in_channels: int,
    in_hw: tuple[int, int],
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    pad_value: int = 0,
) -> BConvPlan:
    """Re-lay out packed weights uint64[O, kh, kw, ceil(C/64)] for ``bconv2d`` on [H, W] inputs.

    ``pad_value``: 0 (zero padding, as ``F.conv2d`` on +-1 tensors), +1 or -1.
    Raises InvalidModelError when the weights do not match the attributes.
    """
    kh, kw = _pair(kernel, "kernel", 1)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    height, width = _pair(in_hw, "input size", 1)
    cw = words_for(in_channels)
    weight_bits = np.asarray(weight_bits)
    if (weight_bits.dtype != np.uint64 or weight_bits.ndim != 4
            or weight_bits.shape[1:] != (kh, kw, cw) or weight_bits.shape[0] < 1):
        raise InvalidModelError(
            f"binary conv weight must be uint64[O, {kh}, {kw}, {cw}] for {in_channels} input "
            f"channels and kernel {kh}x{kw}, got {weight_bits.dtype}{list(weight_bits.shape)}."
        )
    if not padding_bits_clear(weight_bits, in_channels):
        raise InvalidModelError(
            f"binary conv weight has bits set past channel {in_channels} in its last word; "
            "padding bits must be 0 (docs/IR.md). Re-export the model with binarize.pack."
        )
    if pad_value not in (0, 1, -1):
        raise InvalidModelError(f"binary conv pad_value must be 0, 1 or -1, got {pad_value!r}.")
    out_hw = (conv_output_size(height, kh, sh, ph), conv_output_size(width, kw, sw, pw))
    if min(out_hw) < 1:
        raise InvalidModelError(
            f"binary conv with kernel {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw} has an "
            f"empty output on a {height}x{width} input."
        )
    out_channels = weight_bits.shape[0]
    weights = np.ascontiguousarray(weight_bits.transpose(1, 2, 3, 0)).reshape(kh, kw * cw, -1)
    weight_bytes = np.ascontiguousarray(weight_bits).view(np.uint8)
    ones = np.unpackbits(weight_bytes, axis=3).sum(axis=3, dtype=np.int64)
    tap_sums = np.ascontiguousarray((2 * ones - in_channels).transpose(1, 2, 0))
    return BConvPlan(in_channels, out_channels, (height, width), out_hw, (kh, kw), (sh, sw),
                     (ph, pw), int(pad_value), weights, tap_sums)


@njit(cache=True)
def _accumulate_run(acc, a_row, start, length, w_row, w_start):
    """acc[o] += sum_j popcount(a_row[start + j] ^ w_row[w_start + j, o]), j < length."""
    out_channels = acc.shape[0]
    j = 0
    while j + 2 <= length:
        a0 = a_row[start + j]
        a1 = a_row[start + j + 1]
        w0 = w_row[w_start + j]
        w1 = w_row[w_start + j + 1]
        for o in range(out_channels):
            acc[o] += popcount64(a0 ^ w0[o]) + popcount64(a1 ^ w1[o])
        j += 2
    if j < length:
        a0 = a_row[start + j]
        w0 = w_row[w_start + j]
        for o in range(out_channels):
            acc[o] += popcount64(a0 ^ w0[o])


@njit(cache=True, parallel=True)
def _bconv_kernel(a, weights, tap_sums, in_channels, stride_h, stride_w, pad_h, pad_w,
                  pad_value, residual, table, activation, quantize, out_float, out_bits):
    """a uint64[N, H, W * Cw] -> out_float f32[N, OH, OW, O] or out_bits uint64[N, OH, OW, Ow]."""
    n_batch, height = a.shape[0], a.shape[1]
    kh, kw, out_channels = tap_sums.shape
    cw = weights.shape[1] // kw
    width = a.shape[2] // cw
    out_h = max(out_float.shape[1], out_bits.shape[1])
    out_w = max(out_float.shape[2], out_bits.shape[2])
    has_residual = residual.shape[0] > 0
    no_float = np.empty(0, np.float32)
    no_bits = np.empty(0, np.uint64)
    for r in prange(n_batch * out_h):
        n = r // out_h
        oy = r - n * out_h
        acc = np.empty(out_channels, np.uint64)
        y = np.empty(out_channels, np.float32)
        iy0 = oy * stride_h - pad_h
        ky0 = max(0, -iy0)
        ky1 = min(kh, height - iy0)
        for ox in range(out_w):
            ix0 = ox * stride_w - pad_w
            kx0 = max(0, -ix0)
            kx1 = min(kw, width - ix0)
            acc[:] = 0
            for ky in range(ky0, ky1):
                _accumulate_run(acc, a[n, iy0 + ky], (ix0 + kx0) * cw, (kx1 - kx0) * cw,
                                weights[ky], kx0 * cw)
            valid = max(ky1 - ky0, 0) * max(kx1 - kx0, 0) * in_channels
            for o in range(out_channels):
                y[o] = np.float32(valid - 2 * np.int64(acc[o]))
            if pad_value != 0 and valid < kh * kw * in_channels:
                for ky in range(kh):
                    for kx in range(kw):
                        if ky < ky0 or ky >= ky1 or kx < kx0 or kx >= kx1:
                            for o in range(out_channels):
                                y[o] += np.float32(pad_value * tap_sums[ky, kx, o])
            finish_pixel(y, residual[n, oy, ox] if has_residual else no_float, table, activation,
                         quantize, no_float if quantize else out_float[n, oy, ox],
                         out_bits[n, oy, ox] if quantize else no_bits)


def bconv2d(
    plan: BConvPlan,
    a_bits: np.ndarray,
    epilogue: Epilogue | None = None,
    *,
    residual: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Binary convolution of packed activations uint64[N, H, W, ceil(C/64)] (NHWC).

    Returns float32[N, OH, OW, O] (the epilogue applied to the exact integer sums), or packed
    bits uint64[N, OH, OW, ceil(O/64)] when the epilogue quantizes. ``residual`` f32[N, OH, OW,
    O] is added after the affine, before the activation. Threads: ``numba.set_num_threads``.
    """
    epilogue = epilogue or make_epilogue(plan.out_channels)
    height, width = plan.in_hw
    cw = words_for(plan.in_channels)
    if not isinstance(a_bits, np.ndarray) or a_bits.dtype != np.uint64 or a_bits.ndim != 4 \
            or a_bits.shape[1:] != (height, width, cw):
        raise InputError(
            f"binary conv input must be uint64[N, {height}, {width}, {cw}] (packed NHWC), got "
            f"{getattr(a_bits, 'dtype', type(a_bits).__name__)}"
            f"{list(getattr(a_bits, 'shape', []))}."
        )
    if epilogue.channels != plan.out_channels:
        raise InputError(
            f"epilogue is for {epilogue.channels} channels, the conv has {plan.out_channels}."
        )
    shape = (a_bits.shape[0], *plan.out_hw, plan.out_channels)
    residual = check_residual(residual, shape)
    result, out_float, out_bits = output_buffers(shape, epilogue, out)
    a = np.ascontiguousarray(a_bits).reshape(a_bits.shape[0], height, width * cw)
    _bconv_kernel(a, plan.weights, plan.tap_sums, plan.in_channels, *plan.stride, *plan.padding,
                  plan.pad_value, residual, epilogue.table, epilogue.activation,
                  epilogue.quantize, out_float, out_bits)
    return result
