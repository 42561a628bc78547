"""Structural float ops: ``add``, ``concat``, ``flatten``, ``upsample_nearest``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from runtime.registry import MAX_SCALE, Attr, Attrs, Fail, Inputs, OpDef, dims, register
from runtime.schema import ValueInfo

# NCHW axis (as written in the file) -> NHWC axis (as stored in the runtime), for rank 4.
NHWC_AXIS = {1: 3, 2: 1, 3: 2}


def _add_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    if ins[0].shape != ins[1].shape:
        raise fail(
            f"inputs have different shapes [N, {dims(ins[0])}] and [N, {dims(ins[1])}]; "
            "add is elementwise without broadcasting"
        )
    return ins[0].shape


register(
    OpDef(
        "add",
        "elementwise a + b, same shapes",
        inputs=Inputs("float", (2, 4), 2),
        infer=_add_shape,
        run=lambda xs, p, a: xs[0] + xs[1],
        fusion="add",
    )
)


def concat(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """torch.cat along ``axis`` given in NCHW terms (1 = channels)."""
    axis = a["axis"]
    return np.concatenate(xs, axis=NHWC_AXIS[axis] if xs[0].ndim == 4 else axis)


def _concat_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    rank, axis = ins[0].rank, attrs["axis"]
    if axis >= rank:
        raise fail(f"attr 'axis' is {axis} but the inputs have rank {rank} (NCHW axes)")
    first = ins[0].shape
    for i, value in enumerate(ins[1:], start=1):
        other = value.shape
        if len(other) != len(first) or any(
            a != b for k, (a, b) in enumerate(zip(first, other)) if k != axis - 1
        ):
            raise fail(
                f"input {i} has shape [N, {dims(value)}], which differs from input 0 "
                f"[N, {dims(ins[0])}] outside axis {axis}"
            )
    shape = list(first)
    shape[axis - 1] = sum(value.shape[axis - 1] for value in ins)
    return tuple(shape)


register(
    OpDef(
        "concat",
        "torch.cat along axis (NCHW terms: 1 = channels)",
        inputs=Inputs("float", (2, 4), None),
        attrs=(Attr("axis", "int", default=1, minimum=1, maximum=3),),
        infer=_concat_shape,
        run=concat,
    )
)


def flatten(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """torch.flatten(x, 1) of the NCHW tensor: feature index c*H*W + y*W + x (C-major), so an
    NHWC array is transposed first unless H = W = 1. Rank 2 passes through."""
    x = xs[0]
    if x.ndim == 2:
        return x
    n, height, width, _ = x.shape
    if height * width == 1:
        return x.reshape(n, -1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n, -1)


register(
    OpDef(
        "flatten",
        "torch.flatten(x, 1) of the NCHW tensor (C-major order) -> [N, F]",
        infer=lambda attrs, ins, fail: (math.prod(ins[0].shape),),
        run=flatten,
    )
)


def upsample_nearest(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """F.interpolate(mode="nearest", scale_factor=(sh, sw)) with integer factors: output pixel
    (y, x) copies input pixel (y // sh, x // sw)."""
    sh, sw = a["scale"]
    return xs[0].repeat(sh, axis=1).repeat(sw, axis=2)


def _upsample_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    sh, sw = attrs["scale"]
    c, h, w = ins[0].shape
    return (c, h * sh, w * sw)


register(
    OpDef(
        "upsample_nearest",
        'F.interpolate(mode="nearest", scale_factor=scale), integer factors',
        inputs=Inputs("float", (4,)),
        attrs=(Attr("scale", "pair", minimum=1, maximum=MAX_SCALE),),
        infer=_upsample_shape,
        run=upsample_nearest,
        # numpy's repeat makes an intermediate of h*sh*w rows before the second repeat
        scratch=lambda a, i, o: 4 * i[0].shape[0] * i[0].shape[1] * a["scale"][0] * i[0].shape[2],
    )
)
