"""Attr declarations and shape rules shared by several op families."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from runtime.registry import MAX_WINDOW, Attr, Attrs, Fail, Param
from runtime.schema import ValueInfo


def channels_attr(name: str = "channels") -> Attr:
    """The channel (or feature) count an op was built for; checked against its input."""
    return Attr(name, "int", minimum=1)


def check_channels(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail, name: str) -> int:
    if attrs[name] != ins[0].channels:
        raise fail(f"attr {name!r} is {attrs[name]} but the input has {ins[0].channels}")
    return attrs[name]


def window_attrs(*, stride_from_kernel: bool = False, dilation: bool = True) -> tuple[Attr, ...]:
    """kernel (required), stride (default 1, or the kernel for pools), padding and
    (optionally) dilation pairs."""
    attrs = [
        Attr("kernel", "pair", minimum=1, maximum=MAX_WINDOW),
        Attr(
            "stride",
            "pair",
            default=[1, 1],
            minimum=1,
            maximum=MAX_WINDOW,
            default_from="kernel" if stride_from_kernel else "",
        ),
        Attr("padding", "pair", default=[0, 0], minimum=0, maximum=MAX_WINDOW),
    ]
    if dilation:
        attrs.append(Attr("dilation", "pair", default=[1, 1], minimum=1, maximum=MAX_WINDOW))
    return tuple(attrs)


def per_channel(role: str, doc: str = "", required: bool = True, shared: bool = False) -> Param:
    """A float32[C] parameter (``shared``: float32[1] allowed too), C from attr ``channels``."""

    def shapes(attrs: Attrs, ins: Sequence[ValueInfo]) -> tuple[tuple[int, ...], ...]:
        return ((attrs["channels"],), (1,)) if shared else ((attrs["channels"],),)

    return Param(role, "float32", shapes, required, doc or ("[C] or [1]" if shared else "[C]"))


def conv_size(
    hw: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    fail: Fail,
) -> tuple[int, int]:
    """Output (height, width) of a convolution: (L + 2p - d(k-1) - 1) // s + 1 per axis."""
    sizes = []
    for axis, size, k, s, p, d in zip(("height", "width"), hw, kernel, stride, padding, dilation):
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            raise fail(
                f"kernel {k} (dilation {d}) is larger than the padded input {axis} "
                f"{size} + 2*{p}; check kernel/padding or the input size"
            )
        sizes.append((size + 2 * p - span) // s + 1)
    return sizes[0], sizes[1]


def kernel_call(kernel: Callable[..., np.ndarray], plan: object) -> Callable[..., Any]:
    """A producer's prepared kernel, ``bind(epilogue) -> call(x, residual, out=None)``: each
    call runs ``kernel(plan, x, epilogue, residual=residual, out=out)``."""
    return lambda epilogue: lambda x, residual, out=None: kernel(
        plan, x, epilogue, residual=residual, out=out)
