"""Direct float convolution (groups == 1): the FMA micro-kernel over a padded NHWC input.

For output pixel (n, oy, ox) and channel o of a conv with kernel kh x kw, stride (sh, sw),
dilation (dh, dw), on the input x zero-padded by (ph, pw) into xp [N, Hp, Wp, C]:

    y[n, oy, ox, o] = sum_{ky, kx, c} xp[n, oy*sh + ky*dh, ox*sw + kx*dw, c] * W[(ky, kx, c), o]

In the flat xp the patch of a pixel is its first element plus a fixed offset per tap,
``offsets[(ky*kw + kx)*C + c] = (ky*dh*Wp + kx*dw)*C + c``, and the next pixel of the row
starts sw*C elements later. So one call of ``fma_block6`` (runtime/kernels/fma.py) computes 6
consecutive pixels of a row against a block of 16 output channels straight from the input:
no im2col copy, the accumulators in registers. The weights are laid out at plan time as
``blocks[o, k*16 + j] = W[k, 16*o + j]`` (zero past the last channel), one block's taps
contiguous.

Work is split in tasks of one output row (n, oy) and a share of the output channels (64 or
more at a time, so a share packs into whole words): ``prange`` over the tasks. Each task
computes its row into a scratch [OW, 16 * blocks] and runs the fused epilogue
(``finish_rows``) on it while it is in L1/L2. Rows only split their channels when there are
fewer than 4 rows per thread (the 7x7 and 14x14 outputs of a ResNet's later stages).

Measured (2-core AMD EPYC, AVX2 + FMA, 1 thread, min of 30, ms per image): the ResNet stem
7x7/2 3->64 at 224x224, 118 M MACs, 3.2 (12.2 MACs/cycle, 76% of the two FMA pipes' 16)
against 4.4 for im2col + OpenBLAS per tile, the former path (``runtime.kernels.conv``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from runtime.kernels.epilogue import Epilogue, finish_rows
from runtime.kernels.fma import FMA_BLOCK, FMA_PIXELS, fma_block1, fma_block6
from runtime.kernels.geometry import channel_splits, is_pointwise
from runtime.threads import kernel_threads

RUN_PIXELS = 96  # pixels per run of a pointwise conv


@dataclass(frozen=True)
class DirectPlan:
    """The direct path's weights and tap offsets (see the module docstring).

    ``blocks`` f32[ceil(O/16), K*16]; ``offsets`` i64[K] for the padded input of
    ``padded_hw``; ``padding`` (ph, pw); ``pointwise``: a 1x1 conv with stride 1 and no
    padding, whose output pixels read evenly spaced input pixels across rows and samples.
    """

    blocks: np.ndarray
    offsets: np.ndarray
    padded_hw: tuple[int, int]
    padding: tuple[int, int]
    pointwise: bool


def prepare_direct(layout: np.ndarray, in_channels: int, in_hw: tuple[int, int],
                   kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                   dilation: tuple[int, int]) -> DirectPlan:
    """The direct plan of a groups == 1 conv from its GEMM weight f32[K, O], K rows in
    (ky, kx, c) order."""
    depth, out_channels = layout.shape
    n_blocks = -(-out_channels // FMA_BLOCK)
    padded = np.zeros((depth, n_blocks * FMA_BLOCK), np.float32)
    padded[:, :out_channels] = layout
    blocks = padded.reshape(depth, n_blocks, FMA_BLOCK).transpose(1, 0, 2).reshape(n_blocks, -1)
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    padded_hw = (in_hw[0] + 2 * ph, in_hw[1] + 2 * pw)
    ky, kx, c = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(in_channels), indexing="ij")
    offsets = ((ky * dh * padded_hw[1] + kx * dw) * in_channels + c).reshape(-1)
    return DirectPlan(np.ascontiguousarray(blocks), offsets.astype(np.int64), padded_hw,
                      (ph, pw), is_pointwise(kernel, stride, padding))


def scratch_floats(in_hw: tuple[int, int], in_channels: int, out_channels: int,
                   padding: tuple[int, int], out_width: int) -> int:
    """Floats ``direct_conv`` allocates per sample besides its output: the zero-padded input
    (when padded) and one task's rows of raw sums [max(OW, RUN_PIXELS), 16 * ceil(O/16)]."""
    (height, width), (ph, pw) = in_hw, padding
    padded = (height + 2 * ph) * (width + 2 * pw) * in_channels if ph or pw else 0
    return padded + max(out_width, RUN_PIXELS) * -(-out_channels // FMA_BLOCK) * FMA_BLOCK


def padded_input(plan: DirectPlan, x: np.ndarray) -> np.ndarray:
    """x f32[N, H, W, C] C-contiguous, zero-padded to [N, Hp, Wp, C] (x itself when unpadded)."""
    ph, pw = plan.padding
    if ph == 0 and pw == 0:
        return x
    n, height, width, channels = x.shape
    padded = np.zeros((n, *plan.padded_hw, channels), np.float32)
    padded[:, ph : ph + height, pw : pw + width] = x
    return padded


def direct_conv(plan: DirectPlan, x: np.ndarray, out_hw: tuple[int, int],
                stride: tuple[int, int], epilogue: Epilogue, residual: np.ndarray,
                out_float: np.ndarray, out_bits: np.ndarray) -> None:
    """Run the direct conv of x f32[N, H, W, C] into the epilogue's outputs, given as rows
    [N*OH*OW, ...] (empty arrays for those not used; see ``output_buffers``)."""
    xp = padded_input(plan, x)
    rows = x.shape[0] * out_hw[0]
    run = 0
    if plan.pointwise:
        pixels = rows * out_hw[1]
        run = min(pixels, RUN_PIXELS)
        rows = -(-pixels // run)
    splits = channel_splits(rows, epilogue.channels, kernel_threads())
    geometry = np.array([*out_hw, *stride, run, splits], np.int64)
    _direct_kernel(xp, plan.offsets, plan.blocks, geometry, residual, epilogue.table,
                   epilogue.activation, epilogue.quantize, out_float, out_bits)


@njit(cache=True, parallel=True)
def _direct_kernel(xp, offsets, blocks, geometry, residual, table, activation, quantize,
                   out_float, out_bits):
    """The tasks (run of pixels, share of channels) of the module docstring. ``geometry``
    i64[OH, OW, sh, sw, run, shares]: run 0 makes each output row a run; run > 0 (a
    pointwise conv, whose pixels are evenly spaced through the whole input) cuts the N*OH*OW
    pixels into runs of that many; ``shares`` divides the O channels of ``table`` f32[7, O]."""
    n_batch, padded_h, padded_w, channels = xp.shape
    out_h, out_w, stride_h, stride_w, run = geometry[0], geometry[1], geometry[2], \
        geometry[3], geometry[4]
    splits = geometry[5]
    share = table.shape[1] // splits
    share_blocks = -(-share // FMA_BLOCK)
    depth = offsets.shape[0]
    flat = xp.ravel()
    step = stride_w * channels
    pixels = n_batch * out_h * out_w
    length = run if run > 0 else out_w
    runs = -(-pixels // run) if run > 0 else n_batch * out_h
    for task in prange(runs * splits):
        index = task // splits
        part = task - index * splits
        first = index * length
        count = min(length, pixels - first)
        if run > 0:
            start = first * step
        else:
            n = index // out_h
            start = (n * padded_h + (index - n * out_h) * stride_h) * padded_w * channels
        y = np.empty((length, share_blocks * FMA_BLOCK), np.float32)
        for b in range(share_blocks):
            run_block(flat, start, step, count, offsets, depth, blocks,
                      part * share_blocks + b, y, b * FMA_BLOCK)
        finish_rows(y, count, first, part * share, share, residual, table, activation,
                    quantize, out_float, out_bits)


@njit(cache=True, inline="always")
def run_block(flat, start, step, count, offsets, depth, blocks, block, y, column):
    """Pixels 0 .. count of a run (pixel i at flat[start + i * step]) against one weight
    block, into y[:count, column : column + 16]. Six pixels per micro-kernel call; a run's
    last 1-5 pixels come from one more six-pixel call that ends at the run's end and
    recomputes a few pixels (the same sums in the same order, so the same values), cheaper
    than single-pixel calls at a third of the rate. Runs under six pixels go one by one."""
    if count < FMA_PIXELS:
        for i in range(count):
            fma_block1(flat, start + i * step, step, offsets, depth, blocks, block, y, i,
                       column)
        return
    i = 0
    while i < count:
        i = min(i, count - FMA_PIXELS)
        fma_block6(flat, start + i * step, step, offsets, depth, blocks, block, y, i, column)
        i += FMA_PIXELS
