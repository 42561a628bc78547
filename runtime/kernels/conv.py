"""Float 2-D convolution for the layers a BNN keeps real-valued (stem, downsample, depthwise).

NHWC float32 in and out, ``F.conv2d`` semantics (zero padding, stride, dilation, groups), and
the same fused epilogue as the binary kernels (affine, residual, activation, quantize).

- groups == 1 and K = kh*kw*C <= 512 (``uses_direct``): the **direct** FMA micro-kernel of
  runtime/kernels/conv_direct.py, 6 pixels x 16 channels per call straight from the padded
  input (no im2col), the epilogue per output row.
- other groups < C: **tiled** im2col + GEMM. The output pixels of the whole
  batch, p = (n * OH + oy) * OW + ox, are cut into tiles of consecutive pixels
  (``_tile_pixels``: about 192 KiB of im2col rows + results, so the tile stays in L2). Each
  tile is im2col'ed (a nogil numba kernel; a 1x1 / stride 1 / no padding conv reads its
  input rows in place), multiplied by the weight with numpy's BLAS (one GEMM per group, into
  the columns of that group), and finished by the fused epilogue (``finish_rows``, nogil)
  while it is still in cache. ``numba.get_num_threads()`` threads share the tiles: the
  caller and a persistent pool of Python threads each take the next unclaimed tile (BLAS
  and the nogil kernels release the GIL; during ``predict`` OpenBLAS itself runs one thread,
  runtime/threads.py). (numba's ``np.dot`` needs scipy, so the GEMM is called from Python.)
- depthwise (groups == C, O = m*C): a direct numba kernel, channels innermost, epilogue
  fused per output row.

Measured on the 2-core Zen 4 box (1 thread, ResNet stem 7x7/2 3->64 224x224, conv + folded BN
+ ReLU, ms per image, CPU time of the thread while other jobs loaded both cores): the former
whole-batch path (one im2col of the chunk into [N*OH*OW, kh*kw*C] = 7.4 MB per image, one GEMM,
an epilogue pass) 6.6 at batch 1 and 12.1 at batch 32; tiled 4.5 and 4.4; torch 2.13's
``relu(bn(conv(x)))`` 4.0 and 15.4. Of the tiled 4.5 ms, the GEMM is about 2.8, the im2col 0.6
and the epilogue 0.3. Earlier, im2col + OpenBLAS beat a direct numba kernel written as plain
loops (eight taps and two pixels per pass over the output channels) by 1.2-1.7x on the stem
and on 1x1 convs; the FMA micro-kernel, its accumulators held in registers as LLVM vectors,
beats both where its weight block fits L1 (numbers at ``uses_direct``).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from runtime.errors import InvalidModelError
from runtime.kernels.calls import check_call
from runtime.kernels.conv_direct import DirectPlan, direct_conv, prepare_direct
from runtime.kernels.epilogue import (
    Epilogue,
    _as_rows,
    check_residual,
    finish_rows,
    output_buffers,
)
from runtime.kernels.geometry import conv_output_size, int_pair, is_pointwise
from runtime.threads import kernel_threads

DIRECT_MAX_DEPTH = 512  # see uses_direct


@dataclass(frozen=True)
class ConvPlan:
    """A float convolution prepared for one input size (see ``prepare_conv2d``).

    ``weights``: f32[groups, kh*kw*C/groups, O/groups] (GEMM layout, rows in (ky, kx, c)
    order) or, for depthwise convs, f32[kh, kw, O].
    """

    in_channels: int
    out_channels: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    depthwise: bool
    weights: np.ndarray
    direct: DirectPlan | None = None


def prepare_conv2d(
    weight: np.ndarray,
    in_channels: int,
    in_hw: tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> ConvPlan:
    """Re-lay out a PyTorch conv weight f32[O, C/groups, kh, kw] for ``conv2d`` on [H, W].

    The conv bias is not part of the plan: pass it as the epilogue's ``bias``.
    Raises InvalidModelError when the weight does not match the attributes.
    """
    weight = np.asarray(weight)
    if weight.dtype != np.float32 or weight.ndim != 4:
        raise InvalidModelError(
            f"conv2d weight must be float32[O, C/groups, kh, kw], got {weight.dtype}"
            f"{list(weight.shape)}."
        )
    out_channels, group_in, kh, kw = weight.shape
    if groups < 1 or in_channels % groups or out_channels % groups \
            or group_in * groups != in_channels:
        raise InvalidModelError(
            f"conv2d weight {list(weight.shape)} does not fit {in_channels} input channels in "
            f"{groups} groups: need C and O divisible by groups and weight.shape[1] == C/groups."
        )
    sh, sw = int_pair(stride, "stride", 1, "conv2d")
    ph, pw = int_pair(padding, "padding", 0, "conv2d")
    dh, dw = int_pair(dilation, "dilation", 1, "conv2d")
    height, width = int_pair(in_hw, "input size", 1, "conv2d")
    out_hw = (conv_output_size(height, kh, sh, ph, dh), conv_output_size(width, kw, sw, pw, dw))
    if min(out_hw) < 1:
        raise InvalidModelError(
            f"conv2d with kernel {kh}x{kw} has an empty output on a {height}x{width} input."
        )
    depthwise = groups == in_channels and group_in == 1 and groups > 1
    if depthwise:
        layout = weight[:, 0].transpose(1, 2, 0)
    else:
        per_group = weight.reshape(groups, out_channels // groups, group_in, kh, kw)
        layout = per_group.transpose(0, 3, 4, 2, 1).reshape(groups, kh * kw * group_in, -1)
    layout = np.ascontiguousarray(layout)
    direct = prepare_direct(layout[0], in_channels, (height, width), (kh, kw), (sh, sw),
                            (ph, pw), (dh, dw)) if uses_direct(groups, layout.shape[1]) else None
    return ConvPlan(in_channels, out_channels, (height, width), out_hw, (kh, kw), (sh, sw),
                    (ph, pw), (dh, dw), groups, depthwise, layout, direct)


def uses_direct(groups: int, depth: int) -> bool:
    """Whether a conv with GEMM depth K = kh*kw*C/groups runs the direct FMA kernel
    (runtime/kernels/conv_direct.py) rather than im2col + BLAS: groups == 1 and one weight
    block (K x 16 floats) fits the 32 KiB L1 data cache, K <= 512.

    Measured at 1 thread (interleaved, ms, direct / im2col + BLAS): stem 7x7/2 3->64 at 224
    3.3 / 4.1; 3x3/2 3->16 at 224 0.61 / 1.23; 1x1 16->64 at 112 0.81 / 1.31; 1x1 64->128 at
    28 0.23 / 0.21; but 3x3 64->64 (K = 576) 3.0 / 2.5 and 3x3 256->256 (K = 2304) 3.9 / 2.2,
    where BLAS's blocking of K pays. At 2 threads direct was ahead on all of them (1.0-3.5x).
    """
    return groups == 1 and depth <= DIRECT_MAX_DEPTH


@njit(cache=True, inline="always")
def _next_pixel(n, oy, ox, out_h, out_w):
    """(n, oy, ox) of the output pixel after (n, oy, ox) in [N, OH, OW] row-major order."""
    ox += 1
    if ox == out_w:
        ox = 0
        oy += 1
        if oy == out_h:
            oy = 0
            n += 1
    return n, oy, ox


@njit(cache=True, nogil=True)
def _im2col_tile(x, geometry, first, count, cols):
    """Rows ``first .. first + count`` of the im2col matrix of x f32[N, H, W, C] -> cols[:count]
    for a groups == 1 conv.

    Output pixel p = (n * OH + oy) * OW + ox owns row p, its patch in (ky, kx, c) order (the
    GEMM weight rows' order):

        cols[p - first, (ky * kw + kx) * C + c] = x[n, oy*sh - ph + ky*dh, ox*sw - pw + kx*dw, c]

    (0 for a tap in the padding). ``geometry`` is the plan's int64
    [kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW].

    Where a pixel's window lies inside the image horizontally (and dw == 1), each kernel row
    is one run of kw*C contiguous input floats (or zeros above and below the image), copied
    with unsigned flat indices: numba checks a signed index for wraparound, which kept the
    copy scalar. Measured on the stem: 1.7 -> 0.66 ms per image (and the grouped layout's
    extra loop in the same kernel cost 0.3 ms of that, hence a kernel of its own).
    """
    kh, kw, stride_h, stride_w = geometry[0], geometry[1], geometry[2], geometry[3]
    pad_h, pad_w, dil_h, dil_w = geometry[4], geometry[5], geometry[6], geometry[7]
    out_h, out_w = geometry[9], geometry[10]
    _, height, width, channels = x.shape
    depth = cols.shape[1]
    run = kw * channels
    source = x.ravel()
    target = cols.ravel()
    n = first // (out_h * out_w)
    oy = (first - n * out_h * out_w) // out_w
    ox = first - (n * out_h + oy) * out_w
    for i in range(count):
        ix0 = ox * stride_w - pad_w
        whole_rows = dil_w == 1 and ix0 >= 0 and ix0 + kw <= width
        for ky in range(kh):
            iy = oy * stride_h - pad_h + ky * dil_h
            row_inside = 0 <= iy < height
            if whole_rows:
                to = np.uint64(i * depth + ky * run)
                if row_inside:
                    start = np.uint64(((n * height + iy) * width + ix0) * channels)
                    for j in range(np.uint64(run)):
                        target[to + j] = source[start + j]
                else:
                    for j in range(np.uint64(run)):
                        target[to + j] = 0.0
                continue
            for kx in range(kw):
                ix = ix0 + kx * dil_w
                inside = row_inside and 0 <= ix < width
                to = np.uint64(i * depth + (ky * kw + kx) * channels)
                for c in range(channels):
                    target[to + c] = source[((n * height + iy) * width + ix) * channels + c] \
                        if inside else 0.0
        n, oy, ox = _next_pixel(n, oy, ox, out_h, out_w)


@njit(cache=True, nogil=True)
def _im2col_grouped_tile(x, geometry, first, count, cols):
    """``_im2col_tile`` for groups > 1: with Cg = C / groups, pixel p's row holds group g's
    patch as one block in the (ky, kx, c) order of that group's GEMM weight rows,

        cols[p - first, g * kh*kw*Cg + (ky * kw + kx) * Cg + ci]
            = x[n, oy*sh - ph + ky*dh, ox*sw - pw + kx*dw, g * Cg + ci],

    so cols[:, g*kh*kw*Cg : (g+1)*kh*kw*Cg] is group g's im2col matrix.
    """
    kh, kw, stride_h, stride_w = geometry[0], geometry[1], geometry[2], geometry[3]
    pad_h, pad_w, dil_h, dil_w = geometry[4], geometry[5], geometry[6], geometry[7]
    groups, out_h, out_w = geometry[8], geometry[9], geometry[10]
    _, height, width, channels = x.shape
    group_in = channels // groups
    group_k = kh * kw * group_in
    n = first // (out_h * out_w)
    oy = (first - n * out_h * out_w) // out_w
    ox = first - (n * out_h + oy) * out_w
    for i in range(count):
        patch = cols[i]
        for ky in range(kh):
            iy = oy * stride_h - pad_h + ky * dil_h
            for kx in range(kw):
                ix = ox * stride_w - pad_w + kx * dil_w
                inside = 0 <= iy < height and 0 <= ix < width
                for g in range(groups):
                    base = g * group_k + (ky * kw + kx) * group_in
                    for c in range(group_in):
                        patch[base + c] = x[n, iy, ix, g * group_in + c] if inside else 0.0
        n, oy, ox = _next_pixel(n, oy, ox, out_h, out_w)


@njit(cache=True, nogil=True)
def _finish_tile(y, first, count, residual, table, activation, quantize, out_float, out_bits):
    """The epilogue (``finish_rows``) of output pixels first .. first + count from the GEMM
    result y f32[>= count, O] (used as scratch); residual, out_float and out_bits are the
    layer's [N*OH*OW, ...] rows (empty when unused)."""
    finish_rows(y, count, first, 0, table.shape[1], residual, table, activation, quantize,
                out_float, out_bits)


@njit(cache=True, parallel=True)
def _depthwise_kernel(x, weights, multiplier, geometry, residual, table, activation, quantize,
                      out_float, out_bits):
    """Depthwise conv: out[n, y, x, o] = sum_taps x[n, iy, ix, o // m] * w[ky, kx, o], one
    output row per task into a scratch row, then the row's epilogue (``finish_rows``);
    residual, out_float, out_bits are the layer's rows [N*OH*OW, ...] (empty when unused).
    ``geometry`` i64[sh, sw, ph, pw, dh, dw, OH, OW]."""
    n_batch, height, width, _ = x.shape
    kh, kw, out_channels = weights.shape
    stride_h, stride_w, pad_h, pad_w = geometry[0], geometry[1], geometry[2], geometry[3]
    dil_h, dil_w, out_h, out_w = geometry[4], geometry[5], geometry[6], geometry[7]
    for r in prange(n_batch * out_h):
        n = r // out_h
        oy = r - n * out_h
        y = np.zeros((out_w, out_channels), np.float32)
        for ox in range(out_w):
            for ky in range(kh):
                iy = oy * stride_h - pad_h + ky * dil_h
                if iy < 0 or iy >= height:
                    continue
                for kx in range(kw):
                    ix = ox * stride_w - pad_w + kx * dil_w
                    if ix < 0 or ix >= width:
                        continue
                    if multiplier == 1:
                        for o in range(out_channels):
                            y[ox, o] += x[n, iy, ix, o] * weights[ky, kx, o]
                    else:
                        for o in range(out_channels):
                            y[ox, o] += x[n, iy, ix, o // multiplier] * weights[ky, kx, o]
        finish_rows(y, out_w, r * out_w, 0, out_channels, residual, table, activation, quantize,
                    out_float, out_bits)


def conv2d(
    plan: ConvPlan,
    x: np.ndarray,
    epilogue: Epilogue | None = None,
    *,
    residual: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Float convolution of x f32[N, H, W, C] (NHWC) with the fused epilogue.

    Returns float32[N, OH, OW, O], or packed bits uint64[N, OH, OW, ceil(O/64)] when the
    epilogue quantizes. BLAS threads follow numpy's BLAS settings, numba's
    ``numba.set_num_threads``.
    """
    height, width = plan.in_hw
    epilogue = check_call(
        "conv2d", x, np.float32, (height, width, plan.in_channels), epilogue, plan.out_channels,
        " (NHWC)",
    )  # fmt: skip
    x = np.ascontiguousarray(x)
    shape = (x.shape[0], *plan.out_hw, plan.out_channels)
    residual = check_residual(residual, shape)
    result, out_float, out_bits = output_buffers(shape, epilogue, out)
    rows = shape[0] * shape[1] * shape[2]
    targets = [_as_rows(array, rows) for array in (residual, out_float, out_bits)]
    if plan.depthwise:
        geometry = np.array([*plan.stride, *plan.padding, *plan.dilation, *plan.out_hw],
                            np.int64)
        residual_rows, float_rows, bits_rows = targets
        _depthwise_kernel(x, plan.weights, plan.out_channels // plan.in_channels, geometry,
                          residual_rows, epilogue.table, epilogue.activation, epilogue.quantize,
                          float_rows, bits_rows)
    elif plan.direct is not None:
        direct_conv(plan.direct, x, plan.out_hw, plan.stride, epilogue, *targets)
    else:
        _TiledConv(plan, x, epilogue, *targets).run()
    return result


# Bytes of one tile's im2col rows + GEMM result (per thread): small enough to stay in the
# per-core L2 (512 KiB on Zen 4) between the im2col, the GEMM and the epilogue. Measured on
# the stem at 1 thread (min wall time, interleaved, loaded machine; ms per image): tiles of
# 112 pixels 4.7, 224-448 pixels 4.0-4.1, 896 pixels 3.9 at batch 1 (torch 3.7), and 5.7-5.9
# for 224-896 pixels at batch 8. Below ~200 pixels the per-tile Python calls (~10 us) and
# BLAS's per-call packing of the weight start to show, hence also _MIN_TILE_PIXELS.
_TILE_BYTES = 192 * 1024
_MIN_TILE_PIXELS = 256
_WEIGHT_BYTES_PER_PIXEL = 4096
_SCRATCH_CACHE_BYTES = 4 << 20  # scratch up to this size stays with its thread between calls
_SPLIT_MACS = 4_000_000  # below this a conv is too short to share between threads
_pools: dict[int, ThreadPoolExecutor] = {}
_scratch = threading.local()
# a fork()ed child has only the forking thread: the pools' workers are gone, and a task
# submitted to such a pool would never run (the call would wait for it forever)
os.register_at_fork(after_in_child=_pools.clear)


def _thread_scratch(size: int) -> np.ndarray:
    """A float32[size] buffer owned by the calling thread (reused by its next tiles/calls)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is not None and buffer.size >= size:
        return buffer[:size]
    buffer = np.empty(size, np.float32)
    if size * 4 <= _SCRATCH_CACHE_BYTES:
        _scratch.buffer = buffer
    return buffer


def _tile_pixels(rows: int, depth: int, out_channels: int, weight_bytes: int,
                 threads: int) -> int:
    """Output pixels per tile of a conv with ``rows`` output pixels, GEMM K = ``depth``.

    The largest of: the pixels whose im2col row + result row (4 * (K + O) bytes each) fill
    ``_TILE_BYTES``; ``_MIN_TILE_PIXELS``; and weight_bytes / ``_WEIGHT_BYTES_PER_PIXEL``.
    BLAS re-packs the whole weight matrix for every GEMM call, so with a large weight (a
    512->512 3x3 conv: 9.4 MB) short tiles spend their time packing, not multiplying.
    At most ``rows``, and at most ceil(rows / threads) so every thread gets a tile.
    """
    tile = max(_TILE_BYTES // (4 * (depth + out_channels)), _MIN_TILE_PIXELS,
               weight_bytes // _WEIGHT_BYTES_PER_PIXEL)
    return max(1, min(tile, -(-rows // threads)))


class _TiledConv:
    """One groups != C conv call, computed tile by tile (module docstring).

    The output pixels p in 0 .. M = N*OH*OW are cut into tiles of ``tile`` consecutive
    pixels (the last one shorter; a tile may span rows and samples). For each tile:
    im2col rows -> GEMM ``cols @ W`` (per group) into scratch y -> epilogue into the output.
    """

    def __init__(self, plan: ConvPlan, x: np.ndarray, epilogue: Epilogue,
                 residual: np.ndarray, out_float: np.ndarray, out_bits: np.ndarray) -> None:
        self.plan, self.x, self.epilogue = plan, x, epilogue
        self.residual, self.out_float, self.out_bits = residual, out_float, out_bits
        kh, kw = plan.kernel
        self.pointwise = is_pointwise(plan.kernel, plan.stride, plan.padding)
        self.depth = kh * kw * plan.in_channels  # GEMM K summed over the groups
        self.rows = x.shape[0] * plan.out_hw[0] * plan.out_hw[1]
        self.threads = kernel_threads()
        macs = self.rows * self.depth * plan.out_channels // plan.groups
        if macs < _SPLIT_MACS:
            self.threads = 1
        self.tile = _tile_pixels(self.rows, self.depth, plan.out_channels,
                                 plan.weights.nbytes, self.threads)
        self.tiles = -(-self.rows // self.tile)
        self.flat = x.reshape(self.rows, -1) if self.pointwise else x
        self.geometry = np.array([kh, kw, *plan.stride, *plan.padding, *plan.dilation,
                                  plan.groups, *plan.out_hw], np.int64)

    def run(self) -> None:
        """All tiles: on the calling thread, or shared with ``numba.get_num_threads() - 1``
        pool threads (each takes the next unclaimed tile; numpy's BLAS and the nogil numba
        kernels release the GIL)."""
        threads = min(self.threads, self.tiles)
        if threads <= 1:
            self.work(iter(range(self.tiles)))
            return
        pool = _pools.get(threads) or _pools.setdefault(threads, ThreadPoolExecutor(threads - 1))
        claims = itertools.count()  # next() on it is atomic: each tile is claimed once
        helpers = [pool.submit(self.work, claims) for _ in range(threads - 1)]
        try:
            self.work(claims)
        finally:  # never return (or raise) while a helper may still write the output
            wait(helpers)
        for helper in helpers:
            helper.result()

    def work(self, claims: Iterator[int]) -> None:
        """Compute the tiles taken from ``claims`` until it passes the last tile."""
        plan, tile, epilogue = self.plan, self.tile, self.epilogue
        out_channels, groups = plan.out_channels, plan.groups
        scratch = _thread_scratch(tile * (out_channels + (0 if self.pointwise else self.depth)))
        y = scratch[: tile * out_channels].reshape(tile, out_channels)
        cols = scratch[tile * out_channels :].reshape(tile, -1)
        group_out, group_depth = out_channels // groups, self.depth // groups
        im2col = _im2col_tile if groups == 1 else _im2col_grouped_tile
        for index in claims:
            if index >= self.tiles:
                return
            first = index * tile
            count = min(tile, self.rows - first)
            if self.pointwise:
                a = self.flat[first : first + count]
            else:
                im2col(self.x, self.geometry, first, count, cols)
                a = cols[:count]
            if groups == 1:
                np.matmul(a, plan.weights[0], out=y[:count])
            else:
                per_group = a.reshape(count, groups, group_depth)
                for g in range(groups):
                    np.matmul(per_group[:, g], plan.weights[g],
                              out=y[:count, g * group_out : (g + 1) * group_out])
            _finish_tile(y, first, count, self.residual, epilogue.table, epilogue.activation,
                         epilogue.quantize, self.out_float, self.out_bits)
