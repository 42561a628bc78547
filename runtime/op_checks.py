"""Per-op checks of docs/IR.md: attrs (types, ranges, defaults, unknown keys), input kinds
and ranks, shape inference, and the parameter tensors each op expects.

``OPS`` maps an op name to (number of inputs, or None for one or more; checker). A checker takes
an ``AttrReader`` over the node's raw attrs and the ``ValueInfo`` of its inputs, and returns the
output's ``ValueInfo`` and the ``ParamSpec`` of each parameter role. Defaults filled in here
(the attrs a writer may omit): stride 1 (pooling: the kernel), padding 0, dilation 1, groups 1,
pad_value 0, ceil_mode false, count_include_pad true, negative_slope 0.01, activation "relu",
concat axis 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from runtime.errors import InvalidModelError
from runtime.kernels.pack import words_for
from runtime.schema import (
    HYPER_ACTIVATIONS,
    ParamSpec,
    ValueInfo,
    is_int,
    pool_output_size,
)


class AttrReader:
    """Reads one node's attrs with typed accessors; every failure names the node and attr."""

    def __init__(self, where: str, attrs: Mapping[str, Any]) -> None:
        self.where = where
        self.attrs = attrs
        self.parsed: dict[str, Any] = {}

    def fail(self, message: str) -> InvalidModelError:
        return InvalidModelError(f"{self.where}: {message}")

    def _get(self, name: str, default: Any) -> Any:
        if name in self.attrs:
            return self.attrs[name]
        if default is _REQUIRED:
            raise self.fail(f"missing attr {name!r}; docs/IR.md lists the attrs of each op")
        return default

    def int(self, name: str, minimum: int, default: Any = None) -> int:
        value = self._get(name, _REQUIRED if default is None else default)
        if not is_int(value) or value < minimum:
            raise self.fail(f"attr {name!r} must be an integer >= {minimum}, got {value!r}")
        self.parsed[name] = int(value)
        return int(value)

    def pair(self, name: str, minimum: int, default: Any = None) -> tuple[int, int]:
        value = self._get(name, _REQUIRED if default is None else default)
        if is_int(value):
            value = [value, value]
        if (
            not isinstance(value, list | tuple)
            or len(value) != 2
            or not all(is_int(v) and v >= minimum for v in value)
        ):
            raise self.fail(
                f"attr {name!r} must be an integer or a pair of integers >= {minimum}, "
                f"got {value!r}"
            )
        pair = (int(value[0]), int(value[1]))
        self.parsed[name] = pair
        return pair

    def choice(self, name: str, choices: tuple[Any, ...], default: Any = None) -> Any:
        value = self._get(name, _REQUIRED if default is None else default)
        if not any(type(value) is type(c) and value == c for c in choices):  # 1.0 is not 1
            raise self.fail(f"attr {name!r} must be one of {list(choices)}, got {value!r}")
        self.parsed[name] = value
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"attr {name!r} must be true or false, got {value!r}")
        self.parsed[name] = value
        return value

    def number(self, name: str, default: Any = None, nullable: bool = False) -> float | None:
        value = self._get(name, _REQUIRED if default is None and not nullable else default)
        if value is None and nullable:
            self.parsed[name] = None
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(f"attr {name!r} must be a finite number, got {value!r}")
        self.parsed[name] = float(value)
        return float(value)

    def finish(self) -> dict[str, Any]:
        unknown = sorted(set(self.attrs) - set(self.parsed))
        if unknown:
            raise self.fail(
                f"unknown attrs {unknown}; this op takes {sorted(self.parsed)} (docs/IR.md)"
            )
        return self.parsed


_REQUIRED = object()


Checked = tuple[ValueInfo, dict[str, ParamSpec]]
Checker = Callable[[AttrReader, list[ValueInfo]], Checked]


def _expect(reader: AttrReader, ins: list[ValueInfo], kind: str, ranks: tuple[int, ...]) -> None:
    for i, value in enumerate(ins):
        if value.kind != kind:
            hint = (
                "insert a quantize node before it"
                if kind == "bits"
                else "binary values must go through bconv2d/bdense first"
            )
            raise reader.fail(f"input {i} must be {kind} but is {value.kind}; {hint}")
        if len(value.shape) + 1 not in ranks:
            raise reader.fail(
                f"input {i} must have rank {' or '.join(map(str, ranks))}, "
                f"got rank {len(value.shape) + 1} (shape [N, {', '.join(map(str, value.shape))}])"
            )


def _expect_channels(reader: AttrReader, value: ValueInfo, attr: str) -> int:
    channels = reader.int(attr, 1)
    if value.channels != channels:
        raise reader.fail(f"attr {attr!r} is {channels} but the input has {value.channels}")
    return channels


def _f32(*shapes: tuple[int, ...], required: bool = True) -> ParamSpec:
    return ParamSpec("float32", shapes, required)


def _check_quantize(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    c = _expect_channels(r, ins[0], "channels")
    spec = {"threshold": _f32((c,)), "sign": ParamSpec("int8", ((c,),), required=False)}
    return ValueInfo("bits", ins[0].shape), spec


def _hyper_params(r: AttrReader, c: int, heads: int) -> dict[str, ParamSpec]:
    hidden = r.int("hidden", 1)
    r.choice("activation", HYPER_ACTIVATIONS, default="relu")
    return {
        "fc1_weight": _f32((hidden, c)),
        "fc1_bias": _f32((hidden,)),
        "fc2_weight": _f32((heads * c, hidden)),
        "fc2_bias": _f32((heads * c,)),
    }


def _check_dyquantize(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    c = _expect_channels(r, ins[0], "channels")
    return ValueInfo("bits", ins[0].shape), _hyper_params(r, c, 1)


def _check_bconv2d(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "bits", (4,))
    c = _expect_channels(r, ins[0], "in_channels")
    o = r.int("out_channels", 1)
    kh, kw = r.pair("kernel", 1)
    sh, sw = r.pair("stride", 1, default=[1, 1])
    ph, pw = r.pair("padding", 0, default=[0, 0])
    r.choice("pad_value", (0, 1, -1), default=0)
    _, h, w = ins[0].shape
    out_h, out_w = _conv_size(r, (h, w), (kh, kw), (sh, sw), (ph, pw), (1, 1))
    return ValueInfo("float", (o, out_h, out_w)), {
        "weight": ParamSpec("uint64", ((o, kh, kw, words_for(c)),))
    }


def _conv_size(
    r: AttrReader,
    hw: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """Output (height, width) of a convolution: (L + 2p - d(k-1) - 1) // s + 1 per axis."""
    sizes = []
    for axis, size, k, s, p, d in zip(("height", "width"), hw, kernel, stride, padding, dilation):
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            raise r.fail(
                f"kernel {k} (dilation {d}) is larger than the padded input {axis} "
                f"{size} + 2*{p}; check kernel/padding or the input size"
            )
        sizes.append((size + 2 * p - span) // s + 1)
    return sizes[0], sizes[1]


def _check_bdense(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "bits", (2,))
    f = _expect_channels(r, ins[0], "in_features")
    o = r.int("out_features", 1)
    return ValueInfo("float", (o,)), {"weight": ParamSpec("uint64", ((o, words_for(f)),))}


def _check_conv2d(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (4,))
    c = _expect_channels(r, ins[0], "in_channels")
    o = r.int("out_channels", 1)
    kh, kw = r.pair("kernel", 1)
    stride = r.pair("stride", 1, default=[1, 1])
    padding = r.pair("padding", 0, default=[0, 0])
    dilation = r.pair("dilation", 1, default=[1, 1])
    groups = r.int("groups", 1, default=1)
    if c % groups or o % groups:
        raise r.fail(f"groups={groups} must divide in_channels={c} and out_channels={o}")
    out_h, out_w = _conv_size(r, ins[0].shape[1:], (kh, kw), stride, padding, dilation)
    return ValueInfo("float", (o, out_h, out_w)), {
        "weight": _f32((o, c // groups, kh, kw)),
        "bias": _f32((o,), required=False),
    }


def _check_dense(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2,))
    f = _expect_channels(r, ins[0], "in_features")
    o = r.int("out_features", 1)
    return ValueInfo("float", (o,)), {"weight": _f32((o, f)), "bias": _f32((o,), required=False)}


def _check_affine(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    c = _expect_channels(r, ins[0], "channels")
    return ins[0], {"scale": _f32((c,)), "bias": _f32((c,))}


def _check_prelu(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    c = _expect_channels(r, ins[0], "channels")
    return ins[0], {"weight": _f32((c,), (1,))}


def _check_rprelu(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    c = _expect_channels(r, ins[0], "channels")
    return ins[0], {"gamma": _f32((c,)), "zeta": _f32((c,)), "beta": _f32((c,))}


def _check_dyprelu(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    c = _expect_channels(r, ins[0], "channels")
    return ins[0], {**_hyper_params(r, c, 2), "beta": _f32((c,))}


def _check_relu(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    return ins[0], {}


def _check_clamp(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    low = r.number("min", nullable=True)
    high = r.number("max", nullable=True)
    if low is not None and high is not None and low > high:
        raise r.fail(f"attr 'min' ({low}) is larger than 'max' ({high})")
    return ins[0], {}


def _check_leaky_relu(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    r.number("negative_slope", default=0.01)
    return ins[0], {}


def _check_add(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    if ins[0].shape != ins[1].shape:
        raise r.fail(
            f"inputs have different shapes [N, {dims(ins[0])}] and [N, {dims(ins[1])}]; "
            "add is elementwise without broadcasting"
        )
    return ins[0], {}


def dims(value: ValueInfo) -> str:
    return ", ".join(map(str, value.shape))


def _check_concat(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    rank = len(ins[0].shape) + 1
    axis = r.int("axis", 1, default=1)
    if axis >= rank:
        raise r.fail(f"attr 'axis' is {axis} but the inputs have rank {rank} (NCHW axes)")
    first = ins[0].shape
    for i, value in enumerate(ins[1:], start=1):
        other = value.shape
        if len(other) != len(first) or any(
            a != b for k, (a, b) in enumerate(zip(first, other)) if k != axis - 1
        ):
            raise r.fail(
                f"input {i} has shape [N, {dims(value)}], which differs from input 0 "
                f"[N, {dims(ins[0])}] outside axis {axis}"
            )
    shape = list(first)
    shape[axis - 1] = sum(value.shape[axis - 1] for value in ins)
    return ValueInfo("float", tuple(shape)), {}


def _check_pool(r: AttrReader, ins: list[ValueInfo], dilated: bool) -> Checked:
    _expect(r, ins, "float", (4,))
    kernel = r.pair("kernel", 1)
    stride = r.pair("stride", 1, default=list(kernel))
    padding = r.pair("padding", 0, default=[0, 0])
    dilation = r.pair("dilation", 1, default=[1, 1]) if dilated else (1, 1)
    ceil_mode = r.flag("ceil_mode", False)
    c, h, w = ins[0].shape
    out = []
    for axis, size, k, s, p, d in zip(
        ("height", "width"), (h, w), kernel, stride, padding, dilation
    ):
        if 2 * p > d * (k - 1) + 1:
            raise r.fail(
                f"padding {p} along {axis} is more than half the kernel {k}; torch rejects this too"
            )
        n = pool_output_size(size, k, s, p, d, ceil_mode)
        if n < 1:
            raise r.fail(f"kernel {k} is larger than the padded input {axis} {size} + 2*{p}")
        out.append(n)
    return ValueInfo("float", (c, out[0], out[1])), {}


def _check_maxpool2d(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    return _check_pool(r, ins, dilated=True)


def _check_avgpool2d(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    r.flag("count_include_pad", True)
    return _check_pool(r, ins, dilated=False)


def _check_global_avgpool(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (4,))
    return ValueInfo("float", (ins[0].channels, 1, 1)), {}


def _check_flatten(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (2, 4))
    return ValueInfo("float", (math.prod(ins[0].shape),)), {}


def _check_upsample_nearest(r: AttrReader, ins: list[ValueInfo]) -> Checked:
    _expect(r, ins, "float", (4,))
    sh, sw = r.pair("scale", 1)
    c, h, w = ins[0].shape
    return ValueInfo("float", (c, h * sh, w * sw)), {}


# op name -> (number of inputs or None for one or more, checker)
OPS: dict[str, tuple[int | None, Checker]] = {
    "quantize": (1, _check_quantize),
    "dyquantize": (1, _check_dyquantize),
    "bconv2d": (1, _check_bconv2d),
    "bdense": (1, _check_bdense),
    "conv2d": (1, _check_conv2d),
    "dense": (1, _check_dense),
    "affine": (1, _check_affine),
    "prelu": (1, _check_prelu),
    "rprelu": (1, _check_rprelu),
    "dyprelu": (1, _check_dyprelu),
    "relu": (1, _check_relu),
    "clamp": (1, _check_clamp),
    "leaky_relu": (1, _check_leaky_relu),
    "add": (2, _check_add),
    "concat": (None, _check_concat),
    "maxpool2d": (1, _check_maxpool2d),
    "avgpool2d": (1, _check_avgpool2d),
    "global_avgpool": (1, _check_global_avgpool),
    "flatten": (1, _check_flatten),
    "upsample_nearest": (1, _check_upsample_nearest),
}
