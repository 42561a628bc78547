"""Max and average pooling on NHWC float32 with PyTorch's exact semantics, one numba kernel,
``global_avgpool``, and the adaptive pools ``adaptive_avgpool2d`` / ``adaptive_maxpool2d``
(PyTorch's bins, ``adaptive_bins``).

Window of output (oy, ox) along an axis: taps at ``o*s - p + k*d`` for k < kernel; taps outside
the input are skipped (max pooling: padding is -inf; a window with no input pixel gives -inf,
as torch does), the output length follows ``schema.pool_output_size`` (floor or ceil_mode).
Average pooling divides the in-image sum by ``avgpool_divisor`` along each axis (the window
clipped to the padded input with count_include_pad, else to the input), as
``F.avg_pool2d`` does. The kernel walks (sample, output row) pairs in parallel and keeps the
channels innermost, where NHWC makes them contiguous.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from runtime.ops.common import window_attrs
from runtime.registry import Attr, Attrs, Fail, Inputs, OpDef, register
from runtime.schema import ValueInfo, pool_output_size


@njit(cache=True, inline="always")
def _tap_columns(shift: int, stride: int, width: int, out_w: int) -> tuple[int, int]:
    """[first, stop): the output columns ox whose tap column ox*stride + shift lies in
    [0, width), first = ceil(-shift / stride), stop = floor((width - 1 - shift) / stride) + 1,
    clipped to [0, out_w] (first >= stop: none)."""
    return max(0, (stride - 1 - shift) // stride), min(out_w, (width - 1 - shift) // stride + 1)


@njit(cache=True, parallel=True)
def _pool_kernel(x, kernel, stride, padding, dilation, is_max, divisor, out):
    """out[n, oy, ox, c] = max (or sum / divisor[oy, ox]) over the in-image taps
    x[n, oy*sy - py + ky*dy, ox*sx - px + kx*dx, c], folded in (ky, kx) order into an
    accumulator that starts at -inf (max) or +0 (sum). ``max(acc, v)`` is ``v if v > acc else
    acc``: a NaN tap is skipped, and of equal values (+0 / -0) the first tap's is kept.

    Each (n, oy) job walks the taps of its in-image rows ky in that order, two at a time, a
    and b, over its whole output row [OW, C]: ``next = max(max(cur, a), b)`` on the columns
    where both taps are in the image (``_tap_columns``), ``max(cur, a)`` or ``max(cur, b)``
    where one is, ``next = cur`` where neither is (the padding: identity of max and of the
    sum). ``cur`` and ``next`` alternate between the output row and a scratch row, starting
    where the last pass lands in the output. Writing to the other row, not back into ``cur``,
    is what lets LLVM vectorize the max as vmaxps: an in-place ``acc = max(acc, v)`` becomes a
    masked store (vmaskmovps), slow on these CPUs; two taps a pass halve the row traffic.
    Flat unsigned indices spare numba's negative-index wraparound. x, out C-contiguous NHWC."""
    n_batch, height, width, channels = x.shape
    _, out_h, out_w, _ = out.shape
    kh, kw, stride_h, stride_w = kernel[0], kernel[1], stride[0], stride[1]
    pad_h, pad_w, dil_h, dil_w = padding[0], padding[1], dilation[0], dilation[1]
    source = x.ravel()
    target = out.ravel()
    row = np.uint64(out_w * channels)
    pixel_step = np.uint64(stride_w * channels)
    run = np.uint64(channels)
    start = np.float32(-np.inf) if is_max else np.float32(0.0)
    for job in prange(n_batch * out_h):
        n = job // out_h
        oy = job - n * out_h
        base = np.uint64(job) * row
        result = target[base : base + row]
        scratch = np.empty(row, np.float32)
        ky_first, ky_stop = _tap_columns(oy * stride_h - pad_h, dil_h, height, kh)
        taps = max(0, ky_stop - ky_first) * kw
        cur, nxt = (scratch, result) if (taps + 1) // 2 % 2 else (result, scratch)
        for j in range(row):
            cur[j] = start
        for t in range(0, taps, 2):
            iy_a = oy * stride_h - pad_h + (ky_first + t // kw) * dil_h
            shift_a = t % kw * dil_w - pad_w  # tap column ox * sx + shift
            first_a, stop_a = _tap_columns(shift_a, stride_w, width, out_w)
            iy_b, shift_b, first_b, stop_b = 0, 0, 0, 0
            if t + 1 < taps:
                iy_b = oy * stride_h - pad_h + (ky_first + (t + 1) // kw) * dil_h
                shift_b = (t + 1) % kw * dil_w - pad_w
                first_b, stop_b = _tap_columns(shift_b, stride_w, width, out_w)
            low = 0
            while low < out_w:  # column segments on which the taps in the image do not change
                high = out_w
                for edge in (first_a, stop_a, first_b, stop_b):
                    if low < edge < high:
                        high = edge
                in_a = first_a <= low < stop_a
                in_b = first_b <= low < stop_b
                at, end = np.uint64(low) * run, np.uint64(high) * run
                src_a = ((n * height + iy_a) * width + low * stride_w + shift_a) * channels
                src_b = ((n * height + iy_b) * width + low * stride_w + shift_b) * channels
                if in_a and in_b:
                    pa, pb = np.uint64(src_a), np.uint64(src_b)
                    if is_max:
                        for j in range(at, end, run):
                            for c in range(run):
                                nxt[j + c] = max(max(cur[j + c], source[pa + c]), source[pb + c])
                            pa += pixel_step
                            pb += pixel_step
                    else:
                        for j in range(at, end, run):
                            for c in range(run):
                                nxt[j + c] = cur[j + c] + source[pa + c] + source[pb + c]
                            pa += pixel_step
                            pb += pixel_step
                elif in_a or in_b:
                    pa = np.uint64(src_a if in_a else src_b)
                    if is_max:
                        for j in range(at, end, run):
                            for c in range(run):
                                nxt[j + c] = max(cur[j + c], source[pa + c])
                            pa += pixel_step
                    else:
                        for j in range(at, end, run):
                            for c in range(run):
                                nxt[j + c] = cur[j + c] + source[pa + c]
                            pa += pixel_step
                else:
                    for j in range(at, end):
                        nxt[j] = cur[j]
                low = high
            cur, nxt = nxt, cur
        if not is_max:
            for ox in range(out_w):
                scale = divisor[oy, ox]
                at = np.uint64(ox) * run
                for c in range(run):
                    result[at + c] = result[at + c] / scale


def _run(x, kernel, stride, padding, dilation, ceil_mode, is_max, divisor):
    n, height, width, channels = x.shape
    out_h, out_w = (
        pool_output_size(size, k, s, p, d, ceil_mode)
        for size, k, s, p, d in zip((height, width), kernel, stride, padding, dilation)
    )
    out = np.empty((n, out_h, out_w, channels), np.float32)
    pairs = (np.array(kernel), np.array(stride), np.array(padding), np.array(dilation))
    _pool_kernel(np.ascontiguousarray(x), *pairs, is_max, divisor, out)
    return out


def maxpool2d(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """torch.nn.functional.max_pool2d of an NHWC float32 tensor."""
    return _run(
        xs[0],
        a["kernel"],
        a["stride"],
        a["padding"],
        a["dilation"],
        a["ceil_mode"],
        True,
        _NO_DIVISOR,
    )


_NO_DIVISOR = np.ones((1, 1), np.float32)
_NO_DIVISOR.flags.writeable = False  # read-only like _divisor_table's: one kernel specialization


def avgpool_divisor(
    size: int, kernel: int, stride: int, padding: int, ceil_mode: bool, count_include_pad: bool
) -> np.ndarray:
    """Per-output-position divisor along one axis, as PyTorch's avg_pool2d computes it: the
    window [o*s - p, o*s - p + k) is first clipped to the padded input [-p, size + p) (its
    length is the divisor with count_include_pad), then to the input [0, size) (its length is
    the divisor without)."""
    out = pool_output_size(size, kernel, stride, padding, 1, ceil_mode)
    start = np.arange(out) * stride - padding
    end = np.minimum(start + kernel, size + padding)
    if count_include_pad:
        return (end - start).astype(np.float32)
    return (np.minimum(end, size) - np.maximum(start, 0)).astype(np.float32)


def avgpool2d(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """torch.nn.functional.avg_pool2d of an NHWC float32 tensor (no divisor_override)."""
    x = xs[0]
    kernel, stride, padding = a["kernel"], a["stride"], a["padding"]
    _, height, width, _ = x.shape
    divisor = _divisor_table((height, width), tuple(kernel), tuple(stride), tuple(padding),
                             a["ceil_mode"], a["count_include_pad"])
    return _run(x, kernel, stride, padding, (1, 1), a["ceil_mode"], False, divisor)


@functools.lru_cache(maxsize=256)
def _divisor_table(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int], ceil_mode: bool, include: bool) -> np.ndarray:
    """The [OH, OW] divisors of an average pool (``avgpool_divisor`` along each axis), kept
    per geometry: computing them took ~30 us of numpy calls, a pool step's whole time on a
    small input. Read-only, since the cached array is shared."""
    rows = avgpool_divisor(size[0], kernel[0], stride[0], padding[0], ceil_mode, include)
    cols = avgpool_divisor(size[1], kernel[1], stride[1], padding[1], ceil_mode, include)
    table = np.ascontiguousarray(rows[:, None] * cols[None, :])
    table.flags.writeable = False
    return table


def _pool_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    kernel, stride, padding = attrs["kernel"], attrs["stride"], attrs["padding"]
    dilation = attrs.get("dilation", (1, 1))
    c, h, w = ins[0].shape
    out = []
    for axis, size, k, s, p, d in zip(
        ("height", "width"), (h, w), kernel, stride, padding, dilation
    ):
        if 2 * p > d * (k - 1) + 1:
            raise fail(
                f"padding {p} along {axis} is more than half the kernel {k}; torch rejects this too"
            )
        n = pool_output_size(size, k, s, p, d, attrs["ceil_mode"])
        if n < 1:
            raise fail(f"kernel {k} is larger than the padded input {axis} {size} + 2*{p}")
        # max: -inf; average without the padding: 0/0 (with it, 0 as torch gives)
        empty = (
            None
            if attrs.get("count_include_pad", False)
            else _first_empty_window(size, k, s, p, d, n)
        )
        if empty is not None:
            raise fail(
                f"output {empty} along {axis} pools no input pixel (its {k} taps with dilation "
                f"{d} all fall in the padding), so it would be -inf or 0/0 for every input; "
                "use less padding or dilation"
            )
        out.append(n)
    return (c, out[0], out[1])


def _first_empty_window(size: int, k: int, s: int, p: int, d: int, n: int) -> int | None:
    """The first output position whose window ``o*s - p + j*d`` (j < k) holds no index in
    [0, size), or None. Tap j is inside when ``ceil((p - o*s)/d) <= j <= (size-1+p-o*s)//d``."""
    start = np.arange(n, dtype=np.int64) * s - p
    low = np.maximum(0, -(start // d))  # ceil(-start / d)
    high = np.minimum(k - 1, (size - 1 - start) // d)
    empty = np.flatnonzero(low > high)
    return int(empty[0]) if empty.size else None


def _pool_work(a: Attrs, ins: Sequence[ValueInfo], out: ValueInfo) -> int:
    kh, kw = a["kernel"]
    return math.prod(out.shape) * kh * kw


_POOL_IN = Inputs("float", (4,))
_CEIL = Attr("ceil_mode", "flag", default=False)

register(
    OpDef(
        "maxpool2d",
        "torch max_pool2d (padding = -inf); stride defaults to the kernel",
        inputs=_POOL_IN,
        attrs=(*window_attrs(stride_from_kernel=True), _CEIL),
        infer=_pool_shape,
        run=maxpool2d,
        fusion="maxpool",
        work=_pool_work,
    )
)

register(
    OpDef(
        "avgpool2d",
        "torch avg_pool2d; stride defaults to the kernel",
        inputs=_POOL_IN,
        attrs=(
            *window_attrs(stride_from_kernel=True, dilation=False),
            _CEIL,
            Attr("count_include_pad", "flag", default=True),
        ),
        infer=_pool_shape,
        run=avgpool2d,
        work=_pool_work,
    )
)


register(
    OpDef(
        "global_avgpool",
        "adaptive_avg_pool2d(x, 1): [N, C, H, W] -> [N, C, 1, 1]",
        inputs=_POOL_IN,
        infer=lambda attrs, ins, fail: (ins[0].channels, 1, 1),
        run=lambda xs, p, a: global_avgpool(xs[0]),
        work=lambda a, i, o: math.prod(i[0].shape),
    )
)


# ---------------------------------------------------------------- adaptive pooling
def adaptive_bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive pooling bins along one axis: output i pools the input range
    [floor(i*L/out), ceil((i+1)*L/out)), so neighbouring bins may overlap by one pixel and
    every input pixel lies in some bin (out > L repeats pixels)."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, ((i + 1) * size + out - 1) // out


@njit(cache=True, parallel=True)
def _adaptive_kernel(x, row_start, row_end, col_start, col_end, is_max, out):
    n_batch, _, _, channels = x.shape
    _, out_h, out_w, _ = out.shape
    for job in prange(n_batch * out_h):
        n = job // out_h
        oy = job % out_h
        acc = np.empty(channels, np.float32)
        for ox in range(out_w):
            start = -np.inf if is_max else 0.0
            for c in range(channels):
                acc[c] = start
            for iy in range(row_start[oy], row_end[oy]):
                for ix in range(col_start[ox], col_end[ox]):
                    if is_max:
                        for c in range(channels):
                            acc[c] = max(acc[c], x[n, iy, ix, c])
                    else:
                        for c in range(channels):
                            acc[c] += x[n, iy, ix, c]
            area = (row_end[oy] - row_start[oy]) * (col_end[ox] - col_start[ox])
            scale = np.float32(1.0 if is_max else area)
            for c in range(channels):
                out[n, oy, ox, c] = acc[c] / scale


@njit(cache=True)
def _global_mean(x, out):
    """out[n, 0, 0, c] = (sum over the pixels of x[n, :, :, c] in row-major order, float32) /
    (H * W); x f32[N, H, W, C] C-contiguous."""
    n_batch, height, width, channels = x.shape
    pixels = x.reshape(n_batch, height * width, channels)
    count = np.float32(height * width)
    acc = np.empty(channels, np.float32)
    for n in range(n_batch):
        for c in range(channels):
            acc[c] = 0.0
        for p in range(height * width):
            for c in range(channels):
                acc[c] += pixels[n, p, c]
        for c in range(channels):
            out[n, 0, 0, c] = acc[c] / count


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """The mean of each channel of NHWC x over its pixels, [N, 1, 1, C]: the float32 sum in
    row-major pixel order divided by H*W, which is what ``x.mean(axis=(1, 2),
    dtype=np.float32)`` computes, bit for bit. A serial numba loop, not numpy's mean: inside
    a predict, after the network's kernels, numpy's reduction took ~0.09 ms on ResNet-18's
    7x7x512, this loop 0.013 ms (the one-bin adaptive pool kernel, parallel, 0.06 ms)."""
    out = np.empty((x.shape[0], 1, 1, x.shape[3]), np.float32)
    _global_mean(np.ascontiguousarray(x), out)
    return out


def _adaptive(x: np.ndarray, size: Sequence[int], is_max: bool) -> np.ndarray:
    n, height, width, channels = x.shape
    rows, cols = adaptive_bins(height, size[0]), adaptive_bins(width, size[1])
    out = np.empty((n, size[0], size[1], channels), np.float32)
    _adaptive_kernel(x, *rows, *cols, is_max, out)
    return out


def adaptive_avgpool2d(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """F.adaptive_avg_pool2d(x, size) of an NHWC float32 tensor: the mean of each bin
    (``adaptive_bins`` along each axis), summed in float32 as torch does."""
    return _adaptive(xs[0], a["size"], False)


def adaptive_maxpool2d(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """F.adaptive_max_pool2d(x, size) of an NHWC float32 tensor: the maximum of each bin."""
    return _adaptive(xs[0], a["size"], True)


def _adaptive_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    return (ins[0].channels, *attrs["size"])


def _adaptive_work(a: Attrs, ins: Sequence[ValueInfo], out: ValueInfo) -> int:
    """Taps per output element: a bin spans at most ceil(L/out) + 1 pixels along each axis."""
    _, h, w = ins[0].shape
    oh, ow = a["size"]
    return math.prod(out.shape) * (-(-h // oh) + 1) * (-(-w // ow) + 1)


_ADAPTIVE_SIZE = Attr("size", "pair", minimum=1, doc="output [height, width]")

register(
    OpDef(
        "adaptive_avgpool2d",
        "torch adaptive_avg_pool2d(x, size): output (i, j) averages rows "
        "[floor(i*H/oh), ceil((i+1)*H/oh)) and the columns likewise",
        inputs=_POOL_IN,
        attrs=(_ADAPTIVE_SIZE,),
        infer=_adaptive_shape,
        run=adaptive_avgpool2d,
        work=_adaptive_work,
    )
)

register(
    OpDef(
        "adaptive_maxpool2d",
        "torch adaptive_max_pool2d(x, size): the maximum over the bins of adaptive_avgpool2d",
        inputs=_POOL_IN,
        attrs=(_ADAPTIVE_SIZE,),
        infer=_adaptive_shape,
        run=adaptive_maxpool2d,
        work=_adaptive_work,
    )
)
