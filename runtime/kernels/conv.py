"""Float 2-D convolution for the layers a BNN keeps real-valued (stem, downsample, depthwise).

NHWC float32 in and out, ``F.conv2d`` semantics (zero padding, stride, dilation, groups), and
the same fused epilogue as the binary kernels (affine, residual, activation, quantize).

- groups == 1: im2col (numba, parallel over output rows) into [N*OH*OW, kh*kw*C] followed by
  one float32 GEMM through numpy's BLAS; a 1x1 / stride 1 / no padding conv skips the im2col.
  (numba's ``np.dot`` needs scipy, so the GEMM runs from Python.)
- depthwise (groups == C, O = m*C): a direct numba kernel, channels innermost.
- other groups: one im2col, then one GEMM per group.

Measured on the 2-core Zen 4 box (1 thread): im2col + OpenBLAS beat a direct numba kernel
(eight taps and two pixels per pass over the output channels) by 1.2-1.7x on the ResNet stem
(7x7/2, 3->64, 224x224) and on 1x1 convs, so the GEMM path stays. The stem still takes about
2x torch's oneDNN time (benchmarks/RESULTS_layers.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from runtime.errors import InvalidModelError
from runtime.kernels.calls import check_call
from runtime.kernels.epilogue import (
    Epilogue,
    apply_epilogue,
    check_residual,
    finish_pixel,
    output_buffers,
)
from runtime.kernels.geometry import conv_output_size, int_pair


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
    return ConvPlan(in_channels, out_channels, (height, width), out_hw, (kh, kw), (sh, sw),
                    (ph, pw), (dh, dw), groups, depthwise, np.ascontiguousarray(layout))


@njit(cache=True, parallel=True)
def _im2col(x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, cols):
    """x f32[N, H, W, C] -> cols f32[N, OH, OW, kh*kw*C] (taps in the padding are 0).

    Element loops per tap: measured faster than slice copies (their overhead dominates with
    the stem's 3 channels) and than copying whole kernel-row runs.
    """
    n_batch, height, width, channels = x.shape
    out_h, out_w = cols.shape[1], cols.shape[2]
    rows = x.reshape(n_batch, height, width * channels)
    for r in prange(n_batch * out_h):
        n = r // out_h
        oy = r - n * out_h
        for ox in range(out_w):
            patch = cols[n, oy, ox]
            for ky in range(kh):
                iy = oy * stride_h - pad_h + ky * dil_h
                for kx in range(kw):
                    ix = ox * stride_w - pad_w + kx * dil_w
                    base = (ky * kw + kx) * channels
                    if 0 <= iy < height and 0 <= ix < width:
                        row = rows[n, iy]
                        start = ix * channels
                        for c in range(channels):
                            patch[base + c] = row[start + c]
                    else:
                        for c in range(channels):
                            patch[base + c] = 0.0


@njit(cache=True, parallel=True)
def _depthwise_kernel(x, weights, multiplier, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                      residual, table, activation, quantize, out_float, out_bits):
    """Depthwise conv: out[n, y, x, o] = sum_taps x[n, iy, ix, o // m] * w[ky, kx, o]."""
    n_batch, height, width, _ = x.shape
    kh, kw, out_channels = weights.shape
    out_h = max(out_float.shape[1], out_bits.shape[1])
    out_w = max(out_float.shape[2], out_bits.shape[2])
    has_residual = residual.shape[0] > 0
    no_float = np.empty(0, np.float32)
    no_bits = np.empty(0, np.uint64)
    for r in prange(n_batch * out_h):
        n = r // out_h
        oy = r - n * out_h
        y = np.empty(out_channels, np.float32)
        for ox in range(out_w):
            y[:] = 0.0
            for ky in range(kh):
                iy = oy * stride_h - pad_h + ky * dil_h
                if iy < 0 or iy >= height:
                    continue
                for kx in range(kw):
                    ix = ox * stride_w - pad_w + kx * dil_w
                    if ix < 0 or ix >= width:
                        continue
                    pixel = x[n, iy, ix]
                    tap = weights[ky, kx]
                    if multiplier == 1:
                        for o in range(out_channels):
                            y[o] += pixel[o] * tap[o]
                    else:
                        for o in range(out_channels):
                            y[o] += pixel[o // multiplier] * tap[o]
            finish_pixel(y, residual[n, oy, ox] if has_residual else no_float, table, activation,
                         quantize, no_float if quantize else out_float[n, oy, ox],
                         out_bits[n, oy, ox] if quantize else no_bits)


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
    if plan.depthwise:
        residual = check_residual(residual, shape)
        result, out_float, out_bits = output_buffers(shape, epilogue, out)
        _depthwise_kernel(x, plan.weights, plan.out_channels // plan.in_channels, *plan.stride,
                          *plan.padding, *plan.dilation, residual, epilogue.table,
                          epilogue.activation, epilogue.quantize, out_float, out_bits)
        return result
    return apply_epilogue(_gemm(plan, x, shape), epilogue, shape, residual, out)


_SPLIT_MACS = 4_000_000  # below this a GEMM is too short to share between threads
_pools: dict[int, ThreadPoolExecutor] = {}


def _row_split_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` with the rows of ``a`` shared among numba's thread count.

    While a model predicts, OpenBLAS runs one thread (runtime/threads.py), so a big GEMM such
    as the ResNet stem's would not use the second core; numpy releases the GIL inside BLAS, so
    Python threads each multiplying a block of rows do. Each row's arithmetic is unchanged.
    Measured on the stem (12544 x 147 x 64) at 2 threads: 4.8 ms -> 3.6 ms.
    """
    threads = numba.get_num_threads()
    rows = a.shape[0]
    if threads == 1 or rows < 2 * threads or rows * a.shape[1] * b.shape[1] < _SPLIT_MACS:
        return a @ b
    out = np.empty((rows, b.shape[1]), np.float32)
    bounds = [rows * i // threads for i in range(threads + 1)]
    pool = _pools.get(threads) or _pools.setdefault(threads, ThreadPoolExecutor(threads))
    blocks = [(bounds[i], bounds[i + 1]) for i in range(threads)]
    list(pool.map(lambda lo_hi: np.matmul(a[lo_hi[0] : lo_hi[1]], b, out=out[lo_hi[0] : lo_hi[1]]),
                  blocks))
    return out


def _gemm(plan: ConvPlan, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Raw convolution result f32[N*OH*OW, O] by (im2col +) BLAS GEMM."""
    kh, kw = plan.kernel
    rows = shape[0] * shape[1] * shape[2]
    pointwise = (plan.kernel == (1, 1) and plan.stride == (1, 1) and plan.padding == (0, 0))
    if pointwise:
        cols = x.reshape(rows, -1)
    else:
        cols = np.empty((*shape[:3], kh * kw * plan.in_channels), np.float32)
        _im2col(x, kh, kw, *plan.stride, *plan.padding, *plan.dilation, cols)
        cols = cols.reshape(rows, -1)
    if plan.groups == 1:
        return _row_split_matmul(cols, plan.weights[0])
    group_in = plan.in_channels // plan.groups
    taps = cols.reshape(rows, kh * kw, plan.groups, group_in)
    return np.concatenate(
        [taps[:, :, g].reshape(rows, -1) @ plan.weights[g] for g in range(plan.groups)], axis=1
    )
