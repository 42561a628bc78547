"""Layout and resampling ops of modern CPU networks: ``upsample_bilinear`` (FCN/segmentation
heads), ``channel_shuffle`` (ShuffleNet), ``layernorm_channels`` (ConvNeXt's LayerNorm over
the channels of each pixel) and ``channel_slice`` (ShuffleNet-V2's channel split).

All of them work on the runtime's layout: NHWC float32 (rank 4; ``layernorm_channels`` and
``channel_slice`` also take [N, F]), channels last and contiguous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from runtime.ops.common import channels_attr, check_channels, per_channel
from runtime.registry import MAX_CHANNELS, Attr, Attrs, Fail, Inputs, OpDef, register
from runtime.schema import ValueInfo


# ---------------------------------------------------------------- bilinear upsampling
def linear_taps(
    in_size: int, out_size: int, align_corners: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two input taps and weights of each output index along one axis, in float32 as
    PyTorch's ``upsample_bilinear2d`` computes them (``area_pixel_compute_source_index``):

    - align_corners: ``src = i * (L_in - 1) / (L_out - 1)`` (0 when L_out = 1);
    - otherwise: ``src = max((i + 0.5) * L_in / L_out - 0.5, 0)``;

    then ``i0 = min(floor(src), L_in - 1)``, ``i1 = min(i0 + 1, L_in - 1)``,
    ``w1 = clamp(src - i0, 0, 1)``, ``w0 = 1 - w1``. Returns (i0, i1, w0, w1).
    """
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else 0.0
        src = np.float32(scale) * dst
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    first = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    w1 = np.clip(src - first.astype(np.float32), np.float32(0), np.float32(1))
    return first, second, (np.float32(1) - w1).astype(np.float32), w1.astype(np.float32)


@njit(cache=True, parallel=True)
def _bilinear_kernel(x, rows, cols, row_weights, col_weights, out):  # pragma: no cover
    """out[n, y, x, c] = (x[y0, x0]*b0 + x[y0, x1]*b1)*a0 + (x[y1, x0]*b0 + x[y1, x1]*b1)*a1
    with (y0, y1, a0, a1) = rows/row_weights[:, y] and (x0, x1, b0, b1) likewise for columns:
    torch's evaluation order (width first, then height)."""
    n_batch, _, _, channels = x.shape
    _, out_h, out_w, _ = out.shape
    for job in prange(n_batch * out_h):
        n = job // out_h
        oy = job % out_h
        y0, y1 = rows[0, oy], rows[1, oy]
        a0, a1 = row_weights[0, oy], row_weights[1, oy]
        for ox in range(out_w):
            x0, x1 = cols[0, ox], cols[1, ox]
            b0, b1 = col_weights[0, ox], col_weights[1, ox]
            for c in range(channels):
                top = x[n, y0, x0, c] * b0 + x[n, y0, x1, c] * b1
                bottom = x[n, y1, x0, c] * b0 + x[n, y1, x1, c] * b1
                out[n, oy, ox, c] = top * a0 + bottom * a1


def upsample_bilinear(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """F.interpolate(x, size, mode="bilinear", align_corners) of an NHWC float32 tensor."""
    x = xs[0]
    n, height, width, channels = x.shape
    (out_h, out_w), corners = a["size"], a["align_corners"]
    r0, r1, rw0, rw1 = linear_taps(height, out_h, corners)
    c0, c1, cw0, cw1 = linear_taps(width, out_w, corners)
    out = np.empty((n, out_h, out_w, channels), np.float32)
    _bilinear_kernel(
        x, np.stack([r0, r1]), np.stack([c0, c1]), np.stack([rw0, rw1]), np.stack([cw0, cw1]), out
    )
    return out


register(
    OpDef(
        "upsample_bilinear",
        'F.interpolate(x, size, mode="bilinear", align_corners): src = (i + 0.5)*L_in/L_out - '
        "0.5 (clamped at 0), or i*(L_in - 1)/(L_out - 1) with align_corners; taps floor(src) and "
        "the next one",
        inputs=Inputs("float", (4,)),
        attrs=(
            Attr("size", "pair", minimum=1, maximum=MAX_CHANNELS, doc="output [height, width]"),
            Attr("align_corners", "flag", default=False),
        ),
        infer=lambda attrs, ins, fail: (ins[0].channels, *attrs["size"]),
        run=upsample_bilinear,
        work=lambda a, i, o: 4 * math.prod(o.shape),
        # the per-axis tap tables: two int64 indices and two float32 weights per output index
        scratch=lambda a, i, o: 24 * (a["size"][0] + a["size"][1]),
    )
)


# ---------------------------------------------------------------- channel shuffle
def channel_shuffle(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """ShuffleNet's shuffle: ``x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W)``,
    i.e. output channel ``j*g + i`` is input channel ``i*(C/g) + j``; on NHWC the channel
    axis splits into (g, C/g), whose two parts swap."""
    x = xs[0]
    n, height, width, channels = x.shape
    groups = a["groups"]
    split = x.reshape(n, height, width, groups, channels // groups)
    return np.ascontiguousarray(split.transpose(0, 1, 2, 4, 3)).reshape(x.shape)


def _shuffle_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    if ins[0].channels % attrs["groups"]:
        raise fail(f"groups={attrs['groups']} must divide the {ins[0].channels} input channels")
    return ins[0].shape


register(
    OpDef(
        "channel_shuffle",
        "output channel j*g + i = input channel i*(C/g) + j (ShuffleNet; g = groups)",
        inputs=Inputs("float", (4,)),
        attrs=(Attr("groups", "int", minimum=1, maximum=MAX_CHANNELS),),
        infer=_shuffle_shape,
        run=channel_shuffle,
    )
)


# ---------------------------------------------------------------- LayerNorm over channels
@njit(cache=True, parallel=True)
def _layernorm_rows(x, weight, bias, eps, out):  # pragma: no cover - compiled
    """x, out f32[M, C]: each row normalized by its mean and biased variance (float64 sums)."""
    rows, channels = x.shape
    for r in prange(rows):
        total = 0.0
        for c in range(channels):
            total += x[r, c]
        mean = total / channels
        square = 0.0
        for c in range(channels):
            d = x[r, c] - mean
            square += d * d
        inverse = 1.0 / np.sqrt(square / channels + eps)
        for c in range(channels):
            out[r, c] = (x[r, c] - mean) * inverse * weight[c] + bias[c]


def layernorm_channels(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """nn.LayerNorm(C) applied to every pixel's channel vector (ConvNeXt's
    ``permute(0, 2, 3, 1) -> LayerNorm(C) -> permute(0, 3, 1, 2)``; on [N, F]: LayerNorm(F)):
    ``y = (x - mean_c(x)) / sqrt(var_c(x) + eps) * weight[c] + bias[c]`` with the biased
    variance, as torch computes it. On NHWC the channels are each row's last axis."""
    x = xs[0]
    channels = x.shape[-1]
    rows = np.ascontiguousarray(x).reshape(-1, channels)
    out = np.empty_like(rows)
    _layernorm_rows(rows, p["weight"], p["bias"], float(a["eps"]), out)
    return out.reshape(x.shape)


def _layernorm_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    check_channels(attrs, ins, fail, "channels")
    if attrs["eps"] < 0:
        raise fail(f"attr 'eps' is {attrs['eps']}; it must be >= 0")
    return ins[0].shape


register(
    OpDef(
        "layernorm_channels",
        "y = (x - mean_c)/sqrt(var_c + eps)*weight[c] + bias[c] over the channels of each pixel "
        "(biased variance; permute -> nn.LayerNorm(C) -> permute)",
        attrs=(channels_attr(), Attr("eps", "number", default=1e-5)),
        params=(per_channel("weight"), per_channel("bias")),
        infer=_layernorm_shape,
        run=layernorm_channels,
        work=lambda a, i, o: 3 * math.prod(o.shape),
    )
)


# ---------------------------------------------------------------- channel slice
def channel_slice(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """``x[:, start:stop]`` of the NCHW tensor (of [N, F]: features start..stop-1): on NHWC the
    channels are the last axis. Always a fresh contiguous array, never a view of the input."""
    return np.array(xs[0][..., a["start"] : a["stop"]], dtype=np.float32, order="C", copy=True)


def _slice_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    start, stop, channels = attrs["start"], attrs["stop"], ins[0].channels
    if not start < stop <= channels:
        raise fail(
            f"channels [{start}, {stop}) are not a non-empty range of the input's {channels} "
            "channels; need start < stop <= channels"
        )
    return (stop - start, *ins[0].shape[1:])


register(
    OpDef(
        "channel_slice",
        "y = x[:, start:stop]: channels start..stop-1 (of [N, F]: those features); "
        "torch's chunk / split / slicing along dim 1",
        attrs=(
            Attr("start", "int", minimum=0, maximum=MAX_CHANNELS - 1),
            Attr("stop", "int", minimum=1, maximum=MAX_CHANNELS),
        ),
        infer=_slice_shape,
        run=channel_slice,
    )
)
