"""Float activations: ``prelu``, ``rprelu``, ``dyprelu`` (the binary networks' learned ones),
and ``relu``, ``clamp``, ``leaky_relu`` (kept-float ReLU family). Those with fusion role
``activation`` run inside a producer's epilogue when they follow one (``epilogue`` says how:
PReLU with a slope, or RPReLU)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from runtime.ops.common import channels_attr, check_channels, per_channel
from runtime.ops.hyper import hyper_attrs, hyper_function, hyper_params, hyper_work, per_sample
from runtime.registry import Attr, Attrs, Fail, OpDef, register
from runtime.schema import ValueInfo


def _channelwise_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    check_channels(attrs, ins, fail, "channels")
    return ins[0].shape


def prelu(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """PReLU (He et al. 2015): y = x if x >= 0 else w[c]*x, w f32[C] or f32[1] (shared)."""
    x = xs[0]
    return np.where(x >= 0, x, p["weight"] * x)


register(
    OpDef(
        "prelu",
        "y = x if x >= 0 else weight[c]*x (weight f32[C] or f32[1])",
        attrs=(channels_attr(),),
        params=(per_channel("weight", shared=True),),
        infer=_channelwise_shape,
        run=prelu,
        fusion="activation",
        epilogue=lambda p, a: {"prelu": p["weight"]},
    )
)


def rprelu_values(
    x: np.ndarray, gamma: np.ndarray, zeta: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """RPReLU (ReActNet, Liu et al. 2020): y = x - gamma + zeta if x >= gamma else
    beta*(x - gamma) + zeta. gamma, zeta: f32[C], or per sample f32[N, 1, 1, C] / f32[N, C]
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


register(
    OpDef(
        "rprelu",
        "y = x - gamma + zeta if x >= gamma else beta*(x - gamma) + zeta (per channel)",
        attrs=(channels_attr(),),
        params=(per_channel("gamma"), per_channel("zeta"), per_channel("beta")),
        infer=_channelwise_shape,
        run=lambda xs, p, a: rprelu_values(xs[0], p["gamma"], p["zeta"], p["beta"]),
        fusion="activation",
        epilogue=lambda p, a: {"rprelu": (p["gamma"], p["zeta"], p["beta"])},
    )
)


def dyprelu(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """DyPReLU (DyBNN, Zhang et al. 2021): h = FC2(act(FC1(GAP(x)))); gamma = h[:, :C],
    zeta = h[:, C:]; then RPReLU with those per-sample shifts and the static slope beta."""
    x = xs[0]
    channels = x.shape[-1]
    h = hyper_function(x, p, a["activation"])
    gamma = per_sample(h[:, :channels], x.ndim)
    zeta = per_sample(h[:, channels:], x.ndim)
    return rprelu_values(x, gamma, zeta, p["beta"])


register(
    OpDef(
        "dyprelu",
        "h = fc2(act(fc1(mean_hw(x)))); gamma = h[:, :C], zeta = h[:, C:]; then rprelu per "
        "sample with beta",
        attrs=hyper_attrs(),
        params=(*hyper_params(2), per_channel("beta")),
        infer=_channelwise_shape,
        run=dyprelu,
        work=lambda a, i, o: hyper_work(a, i, 2) + math.prod(o.shape),
    )
)


register(
    OpDef(
        "relu",
        "y = max(x, 0)",
        run=lambda xs, p, a: np.maximum(xs[0], np.float32(0)),
        fusion="activation",
        epilogue=lambda p, a: {"prelu": np.zeros(1, np.float32)},
    )
)


def clamp(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """y = min(max(x, min), max), either bound optional (ReLU6, Hardtanh)."""
    low, high = a["min"], a["max"]
    return np.clip(
        xs[0],
        None if low is None else np.float32(low),
        None if high is None else np.float32(high),
    )


def _clamp_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    if attrs["min"] is not None and attrs["max"] is not None and attrs["min"] > attrs["max"]:
        raise fail(f"attr 'min' ({attrs['min']}) is larger than 'max' ({attrs['max']})")
    return ins[0].shape


register(
    OpDef(
        "clamp",
        "y = min(max(x, min), max); null = unbounded (ReLU6, Hardtanh)",
        attrs=(Attr("min", "bound", default=None), Attr("max", "bound", default=None)),
        infer=_clamp_shape,
        run=clamp,
    )
)


register(
    OpDef(
        "leaky_relu",
        "y = x if x >= 0 else negative_slope*x",
        attrs=(Attr("negative_slope", "number", default=0.01),),
        run=lambda xs, p, a: np.where(xs[0] >= 0, xs[0], np.float32(a["negative_slope"]) * xs[0]),
        fusion="activation",
        epilogue=lambda p, a: {"prelu": np.full(1, a["negative_slope"], np.float32)},
    )
)
