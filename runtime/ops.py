"""The runtime's simple float ops, on NHWC (rank 4) or [N, F] (rank 2) float32 arrays.

Each function implements one row of docs/IR.md's op table with PyTorch's semantics; the
per-channel parameters broadcast along the last axis, which is the channel axis in both
layouts. The heavy ops (binary and float convolutions, dense layers, threshold-and-pack) live
in runtime/kernels/, pooling in runtime/pooling.py; these are cheap, memory-bound numpy
expressions (the two quantize ops call the kernels' threshold-and-pack).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from runtime import kernels

# NCHW axis (as written in the file) -> NHWC axis (as stored in the runtime), for rank 4.
NHWC_AXIS = {1: 3, 2: 1, 3: 2}


def quantize(x: np.ndarray, threshold: np.ndarray, sign: np.ndarray | None) -> np.ndarray:
    """Threshold-and-pack along the channel (last) axis: bit = (s*x >= s*t), docs/IR.md;
    [..., C] float32 -> [..., ceil(C/64)] uint64 (runtime/kernels pack_bits)."""
    bits = kernels.pack_bits(x.reshape(-1, x.shape[-1]), threshold, sign)
    return bits.reshape(*x.shape[:-1], -1)


def dyquantize(
    x: np.ndarray,
    fc1_weight: np.ndarray,
    fc1_bias: np.ndarray,
    fc2_weight: np.ndarray,
    fc2_bias: np.ndarray,
    activation: str,
) -> np.ndarray:
    """DySign (DyBNN): per-sample thresholds alpha = FC2(act(FC1(GAP(x)))) [N, C], then
    bit = x >= alpha[n, c], packed along the channel axis."""
    alpha = hyper_function(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation)
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return kernels.pack_bits_per_sample(flat, alpha).reshape(*x.shape[:-1], -1)


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
    (DyPReLU); beta f32[C]. A numba loop: numpy's broadcasting of per-sample shifts over
    [N, H, W, C] with few channels measured ~20x slower."""
    channels = x.shape[-1]
    flat = np.ascontiguousarray(x).reshape(x.shape[0], -1, channels)
    out = np.empty_like(flat)
    _rprelu_rows(
        flat,
        np.ascontiguousarray(gamma, dtype=np.float32).reshape(-1, channels),
        np.ascontiguousarray(zeta, dtype=np.float32).reshape(-1, channels),
        np.ascontiguousarray(beta, dtype=np.float32).reshape(channels),
        out,
    )
    return out.reshape(x.shape)


@njit(cache=True, parallel=True)
def _rprelu_rows(x, gamma, zeta, beta, out):  # pragma: no cover - compiled
    """x, out f32[N, P, C]; gamma, zeta f32[G, C] with G = 1 (shared) or N (per sample)."""
    n_batch, pixels, channels = x.shape
    per_sample = gamma.shape[0] > 1
    for row in prange(n_batch * pixels):
        n = row // pixels
        p = row - n * pixels
        s = n if per_sample else 0
        for c in range(channels):
            shifted = x[n, p, c] - gamma[s, c]
            if x[n, p, c] >= gamma[s, c]:
                out[n, p, c] = shifted + zeta[s, c]
            else:
                out[n, p, c] = beta[c] * shifted + zeta[s, c]


_HYPER_ACTIVATIONS = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}


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
    (two heads: gamma then zeta). One compiled loop: as a chain of small numpy calls it cost
    ~30 us per layer at batch 1, more than the binary conv it feeds. Sums run in float64."""
    flat = np.ascontiguousarray(x).reshape(x.shape[0], -1, x.shape[-1])
    return _hyper_rows(
        flat, fc1_weight, fc1_bias, fc2_weight, fc2_bias, _HYPER_ACTIVATIONS[activation]
    )


@njit(cache=True)
def _hyper_rows(x, w1, b1, w2, b2, act):  # pragma: no cover - compiled
    """x f32[N, P, C] (P = 1 for rank-2 inputs: GAP is then the identity) -> f32[N, O]."""
    n_batch, pixels, channels = x.shape
    hidden, outputs = w1.shape[0], w2.shape[0]
    out = np.empty((n_batch, outputs), np.float32)
    mean = np.empty(channels, np.float64)
    h = np.empty(hidden, np.float64)
    for n in range(n_batch):
        mean[:] = 0.0
        for p in range(pixels):
            for c in range(channels):
                mean[c] += x[n, p, c]
        mean /= pixels
        for j in range(hidden):
            acc = np.float64(b1[j])
            for c in range(channels):
                acc += w1[j, c] * mean[c]
            if act == 1:
                acc = max(acc, 0.0)
            elif act == 2:
                acc = 1.0 / (1.0 + np.exp(-acc)) if acc > -700.0 else 0.0
            elif act == 3:
                acc = np.tanh(acc)
            h[j] = acc
        for o in range(outputs):
            acc = np.float64(b2[o])
            for j in range(hidden):
                acc += w2[o, j] * h[j]
            out[n, o] = acc
    return out


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
