"""A naive reference interpreter of docs/IR.md, written independently of the runtime's kernels.

Only the meaning of each node's attrs (their defaults) comes from the runtime's op registry,
the one place that declares them; ``REFERENCE`` holds one naive function per registry op, and
``tests/runtime/test_registry.py`` checks that it covers every op.

It works in NCHW like the PyTorch graph, keeps binary values as +-1 float arrays (never packed
bits), unpacks the weights bit by bit, and computes convolutions tap by tap and pools window by
window with explicit index arithmetic. Elementwise steps after a binary layer run in float32 in
the IR's order, so a correct fused runtime matches them exactly; float convolutions and the
per-sample hyper functions are compared with a tolerance.

``run_reference`` also reports the smallest distance between a value and its quantize
threshold: tests skip inputs with near-ties, where float rounding (not a bug) could flip a bit.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from runtime import registry
from runtime.schema import ValueInfo


def unpack_pm1(words: np.ndarray, channels: int) -> np.ndarray:
    """uint64[..., W] -> +-1 float64[..., channels] (bit j of word w is channel 64w + j)."""
    bits = (words[..., :, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    bits = bits.reshape(*words.shape[:-1], -1)[..., :channels]
    return np.where(bits == 1, 1.0, -1.0)


def _channel(v: np.ndarray, rank: int) -> np.ndarray:
    """Broadcast a per-channel vector over NCHW (rank 4) or [N, F] (rank 2)."""
    return v.reshape(-1, 1, 1) if rank == 4 else v


def _act(h: np.ndarray, name: str) -> np.ndarray:
    return {
        "relu": lambda a: np.maximum(a, 0),
        "identity": lambda a: a,
        "sigmoid": lambda a: 1 / (1 + np.exp(-a)),
        "tanh": np.tanh,
    }[name](h)


def _hyper(x: np.ndarray, p: dict[str, np.ndarray], activation: str) -> np.ndarray:
    pooled = x.astype(np.float64).mean(axis=(2, 3)) if x.ndim == 4 else x.astype(np.float64)
    h = _act(pooled @ p["fc1_weight"].T.astype(np.float64) + p["fc1_bias"], activation)
    return (h @ p["fc2_weight"].T.astype(np.float64) + p["fc2_bias"]).astype(np.float32)


def _conv_taps(x: np.ndarray, weight: np.ndarray, stride, padding, dilation, fill: float):
    """Direct convolution, one kernel tap at a time: out[n,o,y,x] = sum over (ky, kx, c) of
    xpad[n, c, y*s + ky*d, x*s + kx*d] * weight[o, c, ky, kx]."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, np.float64)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[
                :,
                :,
                ky * dh : ky * dh + (oh - 1) * sh + 1 : sh,
                kx * dw : kx * dw + (ow - 1) * sw + 1 : sw,
            ]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, ky, kx])
    return out


def _pool_out(size, k, s, p, d, ceil_mode):
    """Output length by PyTorch's documented formula (floor or ceil) and its ceil_mode rule."""
    num = size + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _maxpool(x, kernel, stride, padding, dilation, ceil_mode):
    n, c, h, w = x.shape
    oh = _pool_out(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = _pool_out(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    out = np.empty((n, c, oh, ow), np.float32)
    for oy in range(oh):
        for ox in range(ow):
            rows = [oy * stride[0] - padding[0] + i * dilation[0] for i in range(kernel[0])]
            cols = [ox * stride[1] - padding[1] + j * dilation[1] for j in range(kernel[1])]
            rows = [r for r in rows if 0 <= r < h]
            cols = [q for q in cols if 0 <= q < w]
            window = x[:, :, rows][:, :, :, cols]
            # torch yields -inf for a (dilated) window that holds no input pixel at all
            out[:, :, oy, ox] = window.max(axis=(2, 3)) if window.size else -np.inf
    return out


def _avgpool(x, kernel, stride, padding, ceil_mode, count_include_pad):
    n, c, h, w = x.shape
    oh = _pool_out(h, kernel[0], stride[0], padding[0], 1, ceil_mode)
    ow = _pool_out(w, kernel[1], stride[1], padding[1], 1, ceil_mode)
    out = np.empty((n, c, oh, ow), np.float32)
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * stride[0] - padding[0], ox * stride[1] - padding[1]
            y1, x1 = min(y0 + kernel[0], h + padding[0]), min(x0 + kernel[1], w + padding[1])
            padded_count = (y1 - y0) * (x1 - x0)
            y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
            window = x[:, :, y0:y1, x0:x1].astype(np.float64)
            divisor = padded_count if count_include_pad else (y1 - y0) * (x1 - x0)
            out[:, :, oy, ox] = window.sum(axis=(2, 3)) / divisor
    return out


def _quantize(xs, p, a):
    x = xs[0]
    rank = x.ndim
    t = _channel(p["threshold"], rank)[None]
    s = _channel(p.get("sign", np.ones(x.shape[1], np.int8)), rank)[None]
    return np.where(s * x >= s * t, 1.0, -1.0), np.abs(x.astype(np.float64) - t).min()


def _dyquantize(xs, p, a):
    x = xs[0]
    alpha = _hyper(x, p, a["activation"])
    t = alpha.reshape(*alpha.shape, *(1,) * (x.ndim - 2))
    return np.where(x >= t, 1.0, -1.0), np.abs(x.astype(np.float64) - t).min()


def _bconv2d(xs, p, a):
    weight = unpack_pm1(p["weight"], a["in_channels"]).transpose(0, 3, 1, 2)
    return _conv_taps(xs[0], weight, a["stride"], a["padding"], (1, 1), float(a["pad_value"]))


def _conv2d(xs, p, a):
    x, g = xs[0], a["groups"]
    w = p["weight"].astype(np.float64)
    cg, og = x.shape[1] // g, w.shape[0] // g
    y = np.concatenate(
        [
            _conv_taps(
                x[:, i * cg : (i + 1) * cg],
                w[i * og : (i + 1) * og],
                a["stride"],
                a["padding"],
                a["dilation"],
                0.0,
            )
            for i in range(g)
        ],
        axis=1,
    )
    return y + p["bias"].reshape(-1, 1, 1) if "bias" in p else y


def _dense(xs, p, a):
    y = xs[0].astype(np.float64) @ p["weight"].T.astype(np.float64)
    return y + p["bias"] if "bias" in p else y


def _rprelu(xs, p, a, gamma=None, zeta=None):
    x = xs[0]
    rank = x.ndim
    if gamma is None:
        gamma, zeta = _channel(p["gamma"], rank), _channel(p["zeta"], rank)
    beta = _channel(p["beta"], rank)
    return np.where(x >= gamma, (x - gamma) + zeta, beta * (x - gamma) + zeta)


def _dyprelu(xs, p, a):
    x = xs[0]
    h = _hyper(x, p, a["activation"])
    c = x.shape[1]
    extra = (1,) * (x.ndim - 2)
    return _rprelu(xs, p, a, h[:, :c].reshape(-1, c, *extra), h[:, c:].reshape(-1, c, *extra))


def _clamp(xs, p, a):
    y = xs[0].copy()
    if a["min"] is not None:
        y = np.maximum(y, np.float32(a["min"]))
    if a["max"] is not None:
        y = np.minimum(y, np.float32(a["max"]))
    return y


def _upsample_nearest(xs, p, a):
    x = xs[0]
    sh, sw = a["scale"]
    rows = np.arange(x.shape[2] * sh) // sh
    cols = np.arange(x.shape[3] * sw) // sw
    return x[:, :, rows][:, :, :, cols]


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) in float64, written as e^x / (1 + e^x) for x < 0 so nothing overflows."""
    x = x.astype(np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _gelu(xs, p, a):
    x = xs[0].astype(np.float64)
    if a["approximate"] == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _hardsigmoid(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x.astype(np.float64) + 3, 0), 6) / 6


def _mul(xs, p, a):
    a_, b = xs
    if b.shape != a_.shape:  # a per-channel gate [N, C, 1, 1]: repeat it over the pixels
        b = np.tile(b, (1, 1, a_.shape[2], a_.shape[3]))
    return a_.astype(np.float64) * b


def _adaptive_pool(x, size, reduce):
    """PyTorch's adaptive pooling from its documented rule: output i covers the input range
    [floor(i*L/out), ceil((i+1)*L/out)) along each axis (exact rational arithmetic)."""
    n, c, h, w = x.shape
    out = np.empty((n, c, *size))

    def bins(length: int, count: int) -> list[tuple[int, int]]:
        return [
            (math.floor(Fraction(i * length, count)), math.ceil(Fraction((i + 1) * length, count)))
            for i in range(count)
        ]

    for i, (y0, y1) in enumerate(bins(h, size[0])):
        for j, (x0, x1) in enumerate(bins(w, size[1])):
            out[:, :, i, j] = reduce(x[:, :, y0:y1, x0:x1].astype(np.float64), axis=(2, 3))
    return out


def _bilinear_source(i: int, size: int, out: int, align_corners: bool) -> float:
    """The input coordinate output index i samples (F.interpolate's documented mapping)."""
    if align_corners:
        return i * (size - 1) / (out - 1) if out > 1 else 0.0
    return max((i + 0.5) * size / out - 0.5, 0.0)


def _upsample_bilinear(xs, p, a):
    x = xs[0].astype(np.float64)
    n, c, h, w = x.shape
    (oh, ow), corners = a["size"], a["align_corners"]
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        sy = _bilinear_source(i, h, oh, corners)
        y0 = min(int(sy), h - 1)
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for j in range(ow):
            sx = _bilinear_source(j, w, ow, corners)
            x0 = min(int(sx), w - 1)
            x1, lx = min(x0 + 1, w - 1), sx - x0
            top = (1 - lx) * x[:, :, y0, x0] + lx * x[:, :, y0, x1]
            bottom = (1 - lx) * x[:, :, y1, x0] + lx * x[:, :, y1, x1]
            out[:, :, i, j] = (1 - ly) * top + ly * bottom
    return out


def _channel_shuffle(xs, p, a):
    """out channel k = in channel (k mod g)*(C/g) + k div g."""
    x, g = xs[0], a["groups"]
    per_group = x.shape[1] // g
    return x[:, [(k % g) * per_group + k // g for k in range(x.shape[1])]]


def _layernorm_channels(xs, p, a):
    x = xs[0].astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    rank = x.ndim
    return (x - mean) / np.sqrt(var + a["eps"]) * _channel(p["weight"], rank) + _channel(
        p["bias"], rank
    )


def _channel_slice(xs, p, a):
    """Channel by channel: out channel k = in channel start + k, for k < stop - start."""
    x = xs[0]
    return np.stack([x[:, a["start"] + k] for k in range(a["stop"] - a["start"])], axis=1)


# op -> f(inputs NCHW, params by role, attrs parsed by the registry (defaults filled in));
# the quantize ops also return their smallest |value - threshold|
REFERENCE: dict[str, Any] = {
    "quantize": _quantize,
    "dyquantize": _dyquantize,
    "bconv2d": _bconv2d,
    "bdense": lambda xs, p, a: (
        xs[0].astype(np.float64) @ unpack_pm1(p["weight"], a["in_features"]).T
    ),
    "conv2d": _conv2d,
    "dense": _dense,
    "affine": lambda xs, p, a: (
        xs[0] * _channel(p["scale"], xs[0].ndim) + _channel(p["bias"], xs[0].ndim)
    ),
    "prelu": lambda xs, p, a: np.where(
        xs[0] >= 0, xs[0], _channel(p["weight"], xs[0].ndim) * xs[0]
    ),
    "rprelu": _rprelu,
    "dyprelu": _dyprelu,
    "relu": lambda xs, p, a: np.maximum(xs[0], np.float32(0)),
    "clamp": _clamp,
    "leaky_relu": lambda xs, p, a: np.where(
        xs[0] >= 0, xs[0], np.float32(a["negative_slope"]) * xs[0]
    ),
    "add": lambda xs, p, a: xs[0] + xs[1],
    "concat": lambda xs, p, a: np.concatenate(xs, axis=a["axis"]),
    "maxpool2d": lambda xs, p, a: _maxpool(
        xs[0], a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]
    ),
    "avgpool2d": lambda xs, p, a: _avgpool(
        xs[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"]
    ),
    "global_avgpool": lambda xs, p, a: xs[0].astype(np.float64).mean(axis=(2, 3), keepdims=True),
    "flatten": lambda xs, p, a: xs[0].reshape(xs[0].shape[0], -1),
    "upsample_nearest": _upsample_nearest,
    "adaptive_avgpool2d": lambda xs, p, a: _adaptive_pool(xs[0], a["size"], np.mean),
    "adaptive_maxpool2d": lambda xs, p, a: _adaptive_pool(xs[0], a["size"], np.max),
    "upsample_bilinear": _upsample_bilinear,
    "channel_shuffle": _channel_shuffle,
    "layernorm_channels": _layernorm_channels,
    "channel_slice": _channel_slice,
    "silu": lambda xs, p, a: xs[0].astype(np.float64) * _sigmoid(xs[0]),
    "hardswish": lambda xs, p, a: xs[0].astype(np.float64) * _hardsigmoid(xs[0]),
    "hardsigmoid": lambda xs, p, a: _hardsigmoid(xs[0]),
    "sigmoid": lambda xs, p, a: _sigmoid(xs[0]),
    "gelu": _gelu,
    "mul": _mul,
}
QUANTIZERS = ("quantize", "dyquantize")


def run_reference(
    graph: dict[str, Any], tensors: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
) -> tuple[list[np.ndarray], float]:
    """Evaluate the graph on NCHW float32 inputs; returns (outputs in order, smallest
    |value - threshold| seen by any quantize/dyquantize). Attrs are read through the op's
    registry declaration (its defaults), so the file's meaning is defined once."""
    env = dict(inputs)
    kinds = {name: "float" for name in inputs}
    margin = np.inf
    for node in graph["nodes"]:
        p = {role: tensors[key] for role, key in node.get("params", {}).items()}
        xs = [env[name] for name in node["inputs"]]
        op = node["op"]
        infos = [ValueInfo(kinds[name], tuple(x.shape[1:])) for name, x in zip(node["inputs"], xs)]
        attrs, out, _ = registry.get(op).check(node["name"], node.get("attrs", {}), infos)
        if op in QUANTIZERS:
            y, closest = REFERENCE[op](xs, p, attrs)
            margin = min(margin, float(closest))
        else:
            y = REFERENCE[op](xs, p, attrs)
        env[node["outputs"][0]] = np.asarray(y).astype(np.float32)
        kinds[node["outputs"][0]] = out.kind
    return [env[o["name"]] for o in graph["outputs"]], margin
