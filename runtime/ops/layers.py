"""The float producers ``conv2d`` and ``dense`` (kernels with the fused epilogue) and the
per-channel ``affine`` (folded BatchNorm, weight scales, biases)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from runtime import kernels
from runtime.kernels.geometry import is_pointwise
from runtime.ops.common import (
    channels_attr,
    check_channels,
    conv_size,
    kernel_call,
    per_channel,
    window_attrs,
)
from runtime.registry import MAX_CHANNELS, Attr, Attrs, Fail, Inputs, OpDef, Param, register
from runtime.schema import Node, ValueInfo


def _conv_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    c = check_channels(attrs, ins, fail, "in_channels")
    o, groups = attrs["out_channels"], attrs["groups"]
    if c % groups or o % groups:
        raise fail(f"groups={groups} must divide in_channels={c} and out_channels={o}")
    oh, ow = conv_size(
        ins[0].shape[1:],
        attrs["kernel"],
        attrs["stride"],
        attrs["padding"],
        attrs["dilation"],
        fail,
    )
    return (o, oh, ow)


def _conv_plan(node: Node, weight: np.ndarray, in_info: ValueInfo) -> kernels.ConvPlan:
    a = node.attrs
    return kernels.prepare_conv2d(
        weight,
        a["in_channels"],
        in_info.shape[1:],
        a["stride"],
        a["padding"],
        a["dilation"],
        a["groups"],
    )


def _prepare_conv2d(node: Node, weight: np.ndarray, in_info: ValueInfo):
    return kernel_call(kernels.conv2d, _conv_plan(node, weight, in_info))


def _prepare_conv2d_maxpool(
    node: Node, weight: np.ndarray, in_info: ValueInfo, pool: Node, pool_info: ValueInfo
):
    """The conv, its chain and the max pool ``pool`` in one kernel (``kernels.conv2d_maxpool``),
    for a pool without dilation after a conv on the direct path; else None."""
    kh, kw = node.attrs["kernel"]
    depth = kh * kw * node.attrs["in_channels"] // node.attrs["groups"]
    if tuple(pool.attrs["dilation"]) != (1, 1) \
            or not kernels.uses_direct(node.attrs["groups"], depth):
        return None  # decided before the weight re-layout: the plain prepare follows
    a = pool.attrs
    plan = kernels.prepare_conv_maxpool(_conv_plan(node, weight, in_info), a["kernel"],
                                        a["stride"], a["padding"], pool_info.shape[1:])
    assert plan is not None  # uses_direct: the plan has its direct path
    return lambda epilogue, quantize: lambda x: kernels.conv2d_maxpool(plan, x, epilogue,
                                                                       quantize)


def _conv_work(a: Attrs, ins: Sequence[ValueInfo], out: ValueInfo) -> int:
    kh, kw = a["kernel"]
    return math.prod(out.shape) * kh * kw * (a["in_channels"] // a["groups"])


def _conv_scratch(a: Attrs, ins: Sequence[ValueInfo], out: ValueInfo) -> int:
    """Float32 scratch per sample: none for a depthwise conv; for the direct kernel the
    zero-padded input copy and one task's rows (``conv_direct.scratch_floats``); else the
    im2col columns [OH*OW, kh*kw*C] and the GEMM result [OH*OW, O] (a 1x1/stride 1/unpadded
    conv skips the im2col)."""
    c, o, groups = a["in_channels"], a["out_channels"], a["groups"]
    if groups == c and groups > 1:
        return 0
    kh, kw = a["kernel"]
    if kernels.uses_direct(groups, kh * kw * c // groups):
        return 4 * kernels.direct_scratch_floats(ins[0].shape[1:], c, o, a["padding"],
                                                 out.shape[2])
    pixels = out.shape[1] * out.shape[2]
    pointwise = is_pointwise(a["kernel"], a["stride"], a["padding"])
    return 4 * pixels * (o + (0 if pointwise else kh * kw * c))


register(
    OpDef(
        "conv2d",
        "torch.nn.functional.conv2d, zero padding; weight in PyTorch's layout",
        inputs=Inputs("float", (4,)),
        attrs=(
            channels_attr("in_channels"),
            channels_attr("out_channels"),
            *window_attrs(),
            Attr("groups", "int", default=1, minimum=1, maximum=MAX_CHANNELS),
        ),
        params=(
            Param(
                "weight",
                "float32",
                lambda a, i: ((a["out_channels"], a["in_channels"] // a["groups"], *a["kernel"]),),
                doc="[O, C/groups, kh, kw]",
            ),
            Param("bias", "float32", lambda a, i: ((a["out_channels"],),), False, "[O]"),
        ),
        infer=_conv_shape,
        prepare=_prepare_conv2d,
        prepare_maxpool=_prepare_conv2d_maxpool,
        fusion="producer",
        work=_conv_work,
        scratch=_conv_scratch,
    )
)


def _dense_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    check_channels(attrs, ins, fail, "in_features")
    return (attrs["out_features"],)


def _prepare_dense(node: Node, weight: np.ndarray, in_info: ValueInfo):
    plan = kernels.prepare_dense(weight)
    return kernel_call(kernels.dense, plan)


register(
    OpDef(
        "dense",
        "x @ W.T + b",
        inputs=Inputs("float", (2,)),
        attrs=(channels_attr("in_features"), channels_attr("out_features")),
        params=(
            Param(
                "weight",
                "float32",
                lambda a, i: ((a["out_features"], a["in_features"]),),
                doc="[O, F]",
            ),
            Param("bias", "float32", lambda a, i: ((a["out_features"],),), False, "[O]"),
        ),
        infer=_dense_shape,
        prepare=_prepare_dense,
        fusion="producer",
        work=lambda a, i, o: a["out_features"] * a["in_features"],
        scratch=lambda a, i, o: 4 * a["out_features"],
    )
)


def affine(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """y = x * scale[c] + bias[c]."""
    return xs[0] * p["scale"] + p["bias"]


def _channelwise_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    check_channels(attrs, ins, fail, "channels")
    return ins[0].shape


register(
    OpDef(
        "affine",
        "y = x*scale[c] + bias[c] (folded BatchNorm, weight scales, conv bias)",
        attrs=(channels_attr(),),
        params=(per_channel("scale"), per_channel("bias")),
        infer=_channelwise_shape,
        run=affine,
        fusion="affine",
        epilogue=lambda p, a: {"scale": p["scale"], "bias": p["bias"]},
    )
)
