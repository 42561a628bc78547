"""The binary ops: float -> bits (``quantize``, ``dyquantize``) and the binary producers on
bits (``bconv2d``, ``bdense``), whose float outputs are exact integers.

Bits: uint64 words along the channel axis; bit j of word w is channel 64*w + j; 1 means +1,
0 means -1; padding bits past C are 0 in activations and weights, so they XOR to 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from runtime import kernels
from runtime.errors import NonFiniteError
from runtime.kernels.pack import words_for
from runtime.ops.common import (
    channels_attr,
    check_channels,
    conv_size,
    per_channel,
    window_attrs,
)
from runtime.ops.hyper import hyper_attrs, hyper_function, hyper_params, hyper_work
from runtime.registry import Attr, Attrs, Fail, Inputs, OpDef, Param, register
from runtime.schema import Node, ValueInfo

_BITS_IN = Inputs("bits", (4,))


def quantize(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """Threshold-and-pack along the channel (last) axis: bit = (s*x >= s*t);
    [..., C] float32 -> [..., ceil(C/64)] uint64."""
    x = xs[0]
    bits = kernels.pack_bits(x.reshape(-1, x.shape[-1]), p["threshold"], p.get("sign"))
    return bits.reshape(*x.shape[:-1], -1)


def _quantize_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    check_channels(attrs, ins, fail, "channels")
    return ins[0].shape


register(
    OpDef(
        "quantize",
        "bit = (s*x >= s*t): s=+1: x >= t; s=-1: x <= t (sign(0) = +1); t may be +-inf "
        "(a constant bit)",
        attrs=(channels_attr(),),
        params=(
            per_channel("threshold"),
            Param("sign", "int8", lambda a, i: ((a["channels"],),), required=False, doc="[C]"),
        ),
        output_kind="bits",
        infer=_quantize_shape,
        run=quantize,
        fusion="quantize",
        epilogue=lambda p, a: {"quantize": (p["threshold"], p.get("sign"))},
    )
)


def dyquantize(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """DySign (DyBNN): per-sample thresholds alpha = FC2(act(FC1(GAP(x)))) [N, C], then
    bit = x >= alpha[n, c], packed along the channel axis."""
    x = xs[0]
    alpha = hyper_function(x, p, a["activation"])
    if not np.isfinite(alpha).all():  # bits hide a NaN threshold: say so here (N x C values)
        raise NonFiniteError(
            "dyquantize's per-sample thresholds are Inf or NaN for a finite input: its "
            "fc1/fc2 parameters overflow float32; re-pack from a healthy training run"
        )
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return kernels.pack_bits_per_sample(flat, alpha).reshape(*x.shape[:-1], -1)


register(
    OpDef(
        "dyquantize",
        "alpha[n] = fc2(act(fc1(mean_hw(x[n])))) (rank 2: no mean); bit = x >= alpha[n, c] "
        "(DySign)",
        attrs=hyper_attrs(),
        params=hyper_params(1),
        output_kind="bits",
        infer=_quantize_shape,
        run=dyquantize,
        work=lambda a, i, o: hyper_work(a, i, 1) + math.prod(o.shape),
    )
)


def _bconv_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    check_channels(attrs, ins, fail, "in_channels")
    _, h, w = ins[0].shape
    oh, ow = conv_size((h, w), attrs["kernel"], attrs["stride"], attrs["padding"], (1, 1), fail)
    return (attrs["out_channels"], oh, ow)


def _prepare_bconv2d(node: Node, weight: np.ndarray, in_info: ValueInfo):
    a = node.attrs
    plan = kernels.prepare_bconv(
        weight,
        a["in_channels"],
        in_info.shape[1:],
        a["kernel"],
        a["stride"],
        a["padding"],
        a["pad_value"],
    )
    return lambda epilogue: kernels.BConvCall(plan, epilogue)


def _bconv_work(a: Attrs, ins: Sequence[ValueInfo], out: ValueInfo) -> int:
    kh, kw = a["kernel"]
    return math.prod(out.shape) * kh * kw * words_for(a["in_channels"])


def _bconv_scratch(a: Attrs, ins: Sequence[ValueInfo], out: ValueInfo) -> int:
    """The input copy padded with whole words (only when there is padding)."""
    (ph, pw), (_, h, w) = a["padding"], ins[0].shape
    if ph == pw == 0:
        return 0
    return (h + 2 * ph) * (w + 2 * pw) * words_for(a["in_channels"]) * 8


register(
    OpDef(
        "bconv2d",
        "out[o, y, x] = sum over taps inside the image of sum_c a*w (+-1 values); taps in the "
        "padding contribute pad_value*w (0 for zero padding); integer-valued float32; "
        "dilation 1, groups 1",
        inputs=_BITS_IN,
        attrs=(
            channels_attr("in_channels"),
            channels_attr("out_channels"),
            *window_attrs(dilation=False),
            Attr("pad_value", "choice", default=0, choices=(0, 1, -1)),
        ),
        params=(
            Param(
                "weight",
                "uint64",
                lambda a, i: ((a["out_channels"], *a["kernel"], words_for(a["in_channels"])),),
                doc="[O, kh, kw, ceil(C/64)]",
            ),
        ),
        infer=_bconv_shape,
        prepare=_prepare_bconv2d,
        fusion="producer",
        integer_output=True,
        side_quantize=True,
        work=_bconv_work,
        scratch=_bconv_scratch,
    )
)


def _bdense_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    check_channels(attrs, ins, fail, "in_features")
    return (attrs["out_features"],)


def _prepare_bdense(node: Node, weight: np.ndarray, in_info: ValueInfo):
    plan = kernels.prepare_bdense(weight, node.attrs["in_features"])
    return lambda epilogue: kernels.BDenseCall(plan, epilogue)


register(
    OpDef(
        "bdense",
        "out = F - 2*popcount(a XOR w), integer-valued float32",
        inputs=Inputs("bits", (2,)),
        attrs=(channels_attr("in_features"), channels_attr("out_features")),
        params=(
            Param(
                "weight",
                "uint64",
                lambda a, i: ((a["out_features"], words_for(a["in_features"])),),
                doc="[O, ceil(F/64)]",
            ),
        ),
        infer=_bdense_shape,
        prepare=_prepare_bdense,
        fusion="producer",
        integer_output=True,
        work=lambda a, i, o: a["out_features"] * words_for(a["in_features"]),
    )
)
