"""The runtime's simple float ops, on NHWC (rank 4) or [N, F] (rank 2) float32 arrays.

Each function implements one row of docs/IR.md's op table with PyTorch's semantics; the
per-channel parameters broadcast along the last axis, which is the channel axis in both
layouts. The heavy ops (binary and float convolutions, dense layers, threshold-and-pack) live
in runtime/kernels/; these are cheap, memory-bound numpy expressions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.schema import pool_output_size

# NCHW axis (as written in the file) -> NHWC axis (as stored in the runtime), for rank 4.
NHWC_AXIS = {1: 3, 2: 1, 3: 2}


def affine(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """y = x * scale[c] + bias[c] (folded BatchNorm, weight scales, conv bias)."""
    return x * scale + bias


def prelu(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """PReLU (He et al. 2015; Bulat 2019 uses it in binary nets): y = x if x >= 0 else w[c]*x,
    ``weight`` f32[C] or f32[1] (one slope shared by all channels)."""
    return np.where(x >= 0, x, weight * x)


def rprelu(x: np.ndarray, gamma: np.ndarray, zeta: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """RPReLU (ReActNet): y = (x - gamma) + zeta if x >= gamma else beta*(x - gamma) + zeta.

    gamma, zeta broadcast along the last axis: f32[C], or f32[N, 1, 1, C] / f32[N, C] per sample
    (DyPReLU); beta f32[C]."""
    shifted = x - gamma
    return np.where(x >= gamma, shifted + zeta, beta * shifted + zeta)


def spatial_mean(x: np.ndarray) -> np.ndarray:
    """Per-sample channel means: GAP over H, W of an NHWC tensor -> [N, C]; a rank-2 [N, F]
    input is returned unchanged (there is nothing to average, docs/IR.md)."""
    if x.ndim == 2:
        return x
    return x.mean(axis=(1, 2), dtype=np.float32)


def hyper_function(
    x: np.ndarray,
    fc1_weight: np.ndarray,
    fc1_bias: np.ndarray,
    fc2_weight: np.ndarray,
    fc2_bias: np.ndarray,
    activation: str,
) -> np.ndarray:
    """DyBNN's per-sample hyper function: h = FC2(act(FC1(GAP(x)))) -> [N, heads*C].

    act is one of "relu", "identity", "sigmoid", "tanh" (PAPERS.md: the paper leaves it open,
    ReLU by default). Used by ``dyquantize`` (one head: the thresholds alpha) and ``dyprelu``
    (two heads: gamma then zeta)."""
    hidden = spatial_mean(x) @ fc1_weight.T + fc1_bias
    if activation == "relu":
        hidden = np.maximum(hidden, 0)
    elif activation == "sigmoid":
        hidden = 1 / (1 + np.exp(-hidden))
    elif activation == "tanh":
        hidden = np.tanh(hidden)
    return (hidden @ fc2_weight.T + fc2_bias).astype(np.float32, copy=False)


def per_sample(values: np.ndarray, rank: int) -> np.ndarray:
    """Reshape per-sample channel values [N, C] to broadcast over a tensor of ``rank``."""
    return values if rank == 2 else values[:, None, None, :]


def dyprelu(
    x: np.ndarray,
    fc1_weight: np.ndarray,
    fc1_bias: np.ndarray,
    fc2_weight: np.ndarray,
    fc2_bias: np.ndarray,
    beta: np.ndarray,
    activation: str,
) -> np.ndarray:
    """DyPReLU (DyBNN): h = FC2(act(FC1(GAP(x)))); gamma = h[:, :C], zeta = h[:, C:]; then RPReLU
    with those per-sample shifts and the static slope beta f32[C]."""
    channels = x.shape[-1]
    h = hyper_function(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation)
    gamma = per_sample(h[:, :channels], x.ndim)
    zeta = per_sample(h[:, channels:], x.ndim)
    return rprelu(x, gamma, zeta, beta)


def relu(x: np.ndarray) -> np.ndarray:
    """y = max(x, 0)."""
    return np.maximum(x, np.float32(0))


def clamp(x: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """y = min(max(x, low), high), either bound optional (ReLU6, Hardtanh)."""
    return np.clip(
        x,
        None if low is None else np.float32(low),
        None if high is None else np.float32(high),
    )


def leaky_relu(x: np.ndarray, negative_slope: float) -> np.ndarray:
    """y = x if x >= 0 else negative_slope * x."""
    return np.where(x >= 0, x, np.float32(negative_slope) * x)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise a + b, same shapes."""
    return a + b


def concat(xs: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """torch.cat along ``axis`` given in NCHW terms (1 = channels)."""
    return np.concatenate(xs, axis=NHWC_AXIS[axis] if xs[0].ndim == 4 else axis)


def _padded_windows(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool,
    fill: float,
):
    """Pad an NHWC tensor with ``fill`` so every pooling window (ceil_mode ones too) lies inside,
    and yield the strided view of each tap (ky, kx): [N, OH, OW, C]."""
    _, height, width, _ = x.shape
    out = [
        pool_output_size(size, k, s, p, d, ceil_mode)
        for size, k, s, p, d in zip((height, width), kernel, stride, padding, dilation)
    ]
    extra = [
        max(0, (o - 1) * s + d * (k - 1) + 1 - (size + 2 * p))
        for o, size, k, s, p, d in zip(out, (height, width), kernel, stride, padding, dilation)
    ]
    widths = ((0, 0), (padding[0], padding[0] + extra[0]), (padding[1], padding[1] + extra[1]))
    padded = np.pad(x, (*widths, (0, 0)), constant_values=fill)
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            y0, x0 = ky * dilation[0], kx * dilation[1]
            yield padded[
                :,
                y0 : y0 + (out[0] - 1) * stride[0] + 1 : stride[0],
                x0 : x0 + (out[1] - 1) * stride[1] + 1 : stride[1],
            ]


def maxpool2d(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool,
) -> np.ndarray:
    """torch.nn.functional.max_pool2d on NHWC: max over each window, padding = -inf; with
    ceil_mode the output size rounds up (``schema.pool_output_size``)."""
    taps = _padded_windows(x, kernel, stride, padding, dilation, ceil_mode, -np.inf)
    out = next(taps).copy()
    for tap in taps:
        np.maximum(out, tap, out=out)
    return out


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


def avgpool2d(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    ceil_mode: bool,
    count_include_pad: bool,
) -> np.ndarray:
    """torch.nn.functional.avg_pool2d on NHWC: window sum (padding = 0) / divisor, where the
    divisor is the window clipped to the padded input (count_include_pad) or to the input; the
    two axes' divisors multiply (``avgpool_divisor``)."""
    taps = _padded_windows(x, kernel, stride, padding, (1, 1), ceil_mode, 0.0)
    total = next(taps).copy()
    for tap in taps:
        total += tap
    _, height, width, _ = x.shape
    rows = avgpool_divisor(height, kernel[0], stride[0], padding[0], ceil_mode, count_include_pad)
    cols = avgpool_divisor(width, kernel[1], stride[1], padding[1], ceil_mode, count_include_pad)
    return total / (rows[:, None] * cols[None, :])[None, :, :, None]


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """adaptive_avg_pool2d(x, 1): NHWC [N, H, W, C] -> [N, 1, 1, C]."""
    return x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)


def flatten(x: np.ndarray) -> np.ndarray:
    """torch.flatten(x, 1) of the NCHW tensor: feature index c*H*W + y*W + x (C-major), so an
    NHWC array is transposed first unless H = W = 1. Rank 2 passes through."""
    if x.ndim == 2:
        return x
    n, height, width, _ = x.shape
    if height * width == 1:
        return x.reshape(n, -1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n, -1)


def upsample_nearest(x: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """F.interpolate(mode="nearest", scale_factor=(sh, sw)) with integer factors: output pixel
    (y, x) copies input pixel (y // sh, x // sw)."""
    return x.repeat(scale[0], axis=1).repeat(scale[1], axis=2)
