"""A direct float convolution fused with the max pool that reads it (a ResNet stem).

    y = epilogue(conv2d(x))                      [N, OH, OW, O], never stored whole
    z[n, py, px, o] = max over the in-image taps (ky, kx) of y[n, py*s - p + ky, px*s - p + kx, o]
    bits = quantize(z)                           optional, written beside z (a side quantize)

The conv output of a stem is the largest tensor of the network (112x112x64 floats, 3.2 MB,
for a 224x224 input): written by the conv and read back by the pool, it travels through L3 or
memory twice. Here each task (a band of pool output rows of one sample) computes the conv rows
its windows need, one row at a time, into a ring of R = min(kh, OH) rows (row oy in slot
oy mod R, about 86 KB for the stem: it stays in L2), with the conv's own fused epilogue
(``finish_rows``), and pools each output row as soon as its window rows are in the ring. Rows
shared by two windows are computed once within a band; a band's first window recomputes the
rows it shares with the band before (bands: one per sample on one thread, else enough for
two per thread: a 224x224 stem at 2 threads recomputes 3 of 112 rows).

The pool folds the taps in (ky, kx) order with ``max(a, v) = v if v > a else a`` from -inf,
the order and rule of ``runtime/ops/pooling.py``'s max pool, so z is that op's output bit for
bit (``window_max_word`` for each whole 64-channel word; the scalar fold for the rest), and
the bits are the quantize op's (``pack_at`` semantics: ``z * sign >= sign * threshold``).

Measured (2-core AMD EPYC, AVX2 only, busy; min of 20 interleaved calls, ms per 224x224
image): ResNet-18's stem conv + BN + ReLU, max pool 3x3/2 and the first quantize as the three
steps of the unfused plan 3.38, fused 3.02 at 1 thread; the whole Bi-Real-18 11.31 -> 10.84
ms at 1 thread, 8.28 -> 7.00 at 2 (min of 5 alternating processes). bench_layers.py keeps
the stem's table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from runtime.errors import InputError
from runtime.kernels.calls import check_call
from runtime.kernels.conv import ConvPlan
from runtime.kernels.conv_direct import padded_input, run_block
from runtime.kernels.epilogue import Epilogue, finish_rows
from runtime.kernels.epilogue_word import SIGN, SIGNED_THRESHOLD, WORD_LANES, window_max_word
from runtime.kernels.fma import FMA_BLOCK
from runtime.kernels.geometry import int_pair
from runtime.kernels.pack import pack_at, words_for
from runtime.threads import kernel_threads

LAYER = "conv2d + maxpool2d"
BANDS_PER_THREAD = 2


@dataclass(frozen=True)
class ConvMaxPoolPlan:
    """A direct conv (``conv``, whose ``direct`` plan is set) and the max pool of its output:
    ``kernel``, ``stride``, ``padding`` of the pool (dilation 1) and its output size
    ``out_hw`` (floor or ceil mode: the caller's, from the pool's attrs)."""

    conv: ConvPlan
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_hw: tuple[int, int]


def prepare_conv_maxpool(
    conv: ConvPlan,
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    out_hw: tuple[int, int],
) -> ConvMaxPoolPlan | None:
    """The fused plan of ``conv`` followed by a max pool with these attrs (dilation 1) whose
    output is ``out_hw``; None when the conv does not take the direct path (it has no rows
    to hand over: im2col + BLAS tiles, depthwise). Any geometry is safe to run: a window
    is clipped to the conv output (one with no tap inside gives -inf, as the op does)."""
    if conv.direct is None:
        return None
    kernel = int_pair(kernel, "pool kernel", 1, LAYER)
    stride = int_pair(stride, "pool stride", 1, LAYER)
    padding = int_pair(padding, "pool padding", 0, LAYER)
    out_hw = int_pair(out_hw, "pool output size", 1, LAYER)
    return ConvMaxPoolPlan(conv, kernel, stride, padding, out_hw)


def conv2d_maxpool(
    plan: ConvMaxPoolPlan,
    x: np.ndarray,
    epilogue: Epilogue,
    quantize: Epilogue | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """max_pool2d(epilogue(conv2d(x))) for x f32[N, H, W, C] (NHWC): float32[N, PH, PW, O];
    with ``quantize`` (an epilogue holding only a quantize, ``make_epilogue(O,
    quantize=...)``) the pair (floats, their bits uint64[N, PH, PW, ceil(O/64)])."""
    conv = plan.conv
    height, width = conv.in_hw
    epilogue = check_call(LAYER, x, np.float32, (height, width, conv.in_channels), epilogue,
                          conv.out_channels, " (NHWC)")
    if epilogue.quantize:
        raise InputError(f"{LAYER}: the conv's epilogue cannot quantize; the pool's output "
                         "takes the quantize (quantize=).")
    channels = conv.out_channels
    if quantize is not None and (quantize.channels != channels or not quantize.quantize):
        raise InputError(f"{LAYER}: quantize= must be a quantizing epilogue of {channels} "
                         f"channels, got {quantize.channels} channels.")
    x = np.ascontiguousarray(x)
    n_batch = x.shape[0]
    rows = n_batch * plan.out_hw[0] * plan.out_hw[1]
    floats = np.empty((n_batch, *plan.out_hw, channels), np.float32)
    bits = np.empty((n_batch, *plan.out_hw, words_for(channels)), np.uint64)
    table = quantize.table if quantize is not None else epilogue.table
    threads = kernel_threads()
    bands = 1 if threads == 1 else -(-BANDS_PER_THREAD * threads // n_batch)
    bands = max(1, min(bands, plan.out_hw[0]))
    geometry = np.array([*conv.out_hw, *conv.stride, *plan.kernel, *plan.stride,
                         *plan.padding, *plan.out_hw, bands], np.int64)
    _conv_pool_kernel(padded_input(conv.direct, x), conv.direct.offsets, conv.direct.blocks,
                      geometry, epilogue.table, epilogue.activation, table,
                      quantize is not None, floats.reshape(rows, channels),
                      bits.reshape(rows, -1))
    return (floats, bits) if quantize is not None else floats


@njit(cache=True, parallel=True)
def _conv_pool_kernel(xp, offsets, blocks, geometry, table, activation, pool_table, quantize,
                      out_float, out_bits):
    """The tasks (sample, band of pool rows) of the module docstring. ``geometry`` i64[OH, OW,
    sh, sw, pool kh, kw, sh, sw, ph, pw, PH, PW, bands]; ``table`` the conv's epilogue,
    ``pool_table`` the quantize's (its SIGN and SIGNED_THRESHOLD rows); out_float and
    out_bits the pool's rows [N*PH*PW, O] and [N*PH*PW, ceil(O/64)]."""
    n_batch, padded_h, padded_w, channels = xp.shape
    out_h, out_w, stride_h, stride_w = geometry[0], geometry[1], geometry[2], geometry[3]
    pool_kh, pool_kw, pool_sh, pool_sw = geometry[4], geometry[5], geometry[6], geometry[7]
    pool_ph, pool_pw, pool_h, pool_w = geometry[8], geometry[9], geometry[10], geometry[11]
    bands = geometry[12]
    # a window clipped to the conv output spans at most this many rows: the ring's size (a
    # pool kernel taller than the conv output, allowed with padding, must not size it)
    ring_rows = min(pool_kh, out_h)
    out_channels = table.shape[1]
    n_blocks = -(-out_channels // FMA_BLOCK)
    depth = offsets.shape[0]
    flat = xp.ravel()
    step = stride_w * channels
    whole = out_channels // WORD_LANES
    tail = whole * WORD_LANES
    no_rows = np.empty((0, 0), np.float32)
    no_bits = np.empty((0, 0), np.uint64)
    floats = out_float.ravel()
    for task in prange(n_batch * bands):
        n = task // bands
        band = task - n * bands
        first_row = band * pool_h // bands
        stop_row = (band + 1) * pool_h // bands
        y = np.empty((out_w, n_blocks * FMA_BLOCK), np.float32)
        ring = np.empty((ring_rows * out_w, out_channels), np.float32)
        ring_flat = ring.ravel()
        taps = np.empty(ring_rows * min(pool_kw, out_w), np.int64)
        done = -1  # the last conv row this task put in the ring
        for py in range(first_row, stop_row):
            top = py * pool_sh - pool_ph
            low, high = max(top, 0), min(top + pool_kh, out_h)
            for oy in range(max(low, done + 1), high):
                start = (n * padded_h + oy * stride_h) * padded_w * channels
                for b in range(n_blocks):
                    run_block(flat, start, step, out_w, offsets, depth, blocks, b, y,
                               b * FMA_BLOCK)
                finish_rows(y, out_w, (oy % ring_rows) * out_w, 0, out_channels, no_rows, table,
                            activation, False, ring, no_bits)
                done = oy
            for px in range(pool_w):
                left = px * pool_sw - pool_pw
                count = 0
                for oy in range(low, high):  # the window's taps in (ky, kx) order
                    for ox in range(max(left, 0), min(left + pool_kw, out_w)):
                        taps[count] = ((oy % ring_rows) * out_w + ox) * out_channels
                        count += 1
                r = (n * pool_h + py) * pool_w + px
                for w in range(whole):
                    packed = window_max_word(ring_flat, taps, count, pool_table, w * WORD_LANES,
                                             floats, r * out_channels + w * WORD_LANES, quantize)
                    if quantize:
                        out_bits[r, w] = packed
                if tail < out_channels:
                    for c in range(tail, out_channels):
                        m = np.float32(-np.inf)
                        for k in range(count):
                            m = max(m, ring_flat[taps[k] + c])
                        out_float[r, c] = m
                    if quantize:
                        pack_at(floats, r * out_channels + tail, out_channels - tail,
                                pool_table, SIGN, pool_table, SIGNED_THRESHOLD, tail, out_bits,
                                r, whole)
