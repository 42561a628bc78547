"""Lower a converted (student) ``GraphModule`` to the runtime's op list (``docs/IR.md``).

Every FX node maps to zero or more IR nodes:

* ``BinaryConv2d`` / ``BinaryLinear`` -> ``quantize`` (or ``dyquantize`` for DySign) of the
  input, ``bconv2d`` / ``bdense`` on the bits (integer dot products, zero padding), then an
  ``affine`` carrying the weight scale alpha_o and the layer bias: ``y = alpha_o * acc + b``.
  The exported network always uses the hard sign (``x >= threshold``) and sign(W), whatever
  the training schedule left the binarizers at.
* BatchNorm -> ``affine`` with ``scale = gamma / sqrt(var + eps)``, ``bias = beta - mean*scale``.
* float conv / linear, PReLU / RPReLU / DyPReLU, ReLU / ReLU6 / Hardtanh / LeakyReLU, pools,
  adds, concats, flatten, nearest upsampling -> their IR op; Identity and Dropout vanish.

Anything else raises :class:`binarize.errors.ConversionError` naming the node, so a model the
runtime cannot run fails at pack time, never at predict time. ``passes.fold`` then merges
affines and folds them into the binarizer thresholds.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from binarize.errors import ConversionError
from binarize.nn import (
    ApproxSign,
    BinaryConv2d,
    BinaryLinear,
    DyPReLU,
    DySign,
    ProgressiveSign,
    RPReLU,
    RSign,
    SignSTE,
)
from passes.ir import IRNode, Program

_DYNAMIC_ACTIVATIONS = ("relu", "identity", "sigmoid", "tanh")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _pair(v: int | Sequence[int]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def pack_sign_bits(values: np.ndarray) -> np.ndarray:
    """Pack the signs of ``values`` along the last axis into uint64 words.

    Bit ``j`` of word ``w`` is 1 where ``values[..., 64*w + j] >= 0`` (sign(0) = +1); the bits
    past the last channel are 0, so they XOR to 0 against packed activations.
    """
    channels = values.shape[-1]
    words = -(-channels // 64)
    bits = np.zeros((*values.shape[:-1], words * 64), dtype=np.uint8)
    bits[..., :channels] = values >= 0
    packed = np.packbits(bits, axis=-1, bitorder="little")  # 8 bytes per word, little-endian
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64)


class _Lowerer:
    """Walks the FX graph once, emitting IR nodes and tracking value kinds and shapes."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes: list[IRNode] = []
        self.kinds: dict[str, str] = {}
        self.shapes: dict[str, list[int | None]] = {}
        self.env: dict[fx.Node, Any] = {}  # fx node -> value name, or a python value (sizes)

    # ---------------------------------------------------------------- helpers
    def fail(self, node: fx.Node, why: str, fix: str) -> ConversionError:
        where = f"node '{node.name}' ({node.op} {getattr(node.target, '__name__', node.target)})"
        return ConversionError(f"cannot pack {where}: {why}. {fix}")

    def shape_of(self, node: fx.Node) -> list[int | None]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.fail(node, "it does not produce a single tensor", "Return tensors only.")
        shape: list[int | None] = [int(s) for s in meta.shape]
        shape[0] = None
        return shape

    def value(self, node: fx.Node, arg: Any, kind: str = "float") -> str:
        if not isinstance(arg, fx.Node) or arg not in self.env:
            raise self.fail(node, f"its input {arg!r} is not a tensor of the graph", "")
        name = self.env[arg]
        if not isinstance(name, str):
            raise self.fail(node, f"its input {arg.name} is not a tensor", "")
        if self.kinds[name] != kind:
            raise self.fail(
                node,
                f"it reads {self.kinds[name]} values where the runtime needs {kind}",
                "Binarizers may only feed binary layers (BinaryConv2d / BinaryLinear).",
            )
        return name

    def emit(
        self,
        op: str,
        name: str,
        inputs: list[str],
        shape: list[int | None],
        *,
        kind: str = "float",
        attrs: dict[str, Any] | None = None,
        params: dict[str, np.ndarray] | None = None,
    ) -> str:
        self.nodes.append(IRNode(op, name, inputs, [name], attrs or {}, params or {}))
        self.kinds[name] = kind
        self.shapes[name] = shape
        return name

    def alias(self, node: fx.Node, src: str) -> None:
        self.env[node] = src

    # ---------------------------------------------------------------- driver
    def run(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        inputs: list[dict[str, Any]] = []
        outputs: list[dict[str, Any]] = []
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = self.shape_of(node)
                self.kinds[node.name] = "float"
                self.shapes[node.name] = shape
                self.env[node] = node.name
                inputs.append({"name": node.name, "shape": shape, "dtype": "float32"})
            elif node.op == "call_module":
                self.lower_module(node, self.modules[node.target])
            elif node.op == "call_function":
                self.lower_function(node)
            elif node.op == "call_method":
                self.lower_method(node)
            elif node.op == "output":
                for arg in _flatten_outputs(node.args[0]):
                    name = self.value(node, arg)
                    outputs.append({"name": name, "shape": self.shapes[name]})
            elif node.op == "get_attr":
                raise self.fail(
                    node,
                    "the graph reads a raw tensor attribute",
                    "Wrap constant tensors in a module the packer knows (e.g. a BatchNorm or "
                    "affine) or remove them.",
                )
        return inputs, outputs

    # ---------------------------------------------------------------- modules
    def lower_module(self, node: fx.Node, mod: nn.Module) -> None:
        handler = _module_handler(mod)
        if handler is None:
            raise self.fail(
                node,
                f"module type {type(mod).__name__} has no runtime op",
                "Supported: binary and float Conv2d/Linear, BatchNorm, PReLU/RPReLU/DyPReLU, "
                "ReLU/ReLU6/Hardtanh/LeakyReLU, pools, Flatten, nearest Upsample, Identity, "
                "Dropout. Replace the layer, or keep it out of the exported graph.",
            )
        handler(self, node, mod)

    def lower_binary_layer(self, node: fx.Node, mod: BinaryConv2d | BinaryLinear) -> None:
        x = self.value(node, node.args[0])
        in_shape = self.shapes[x]
        out_shape = self.shape_of(node)
        bits = self.lower_binarizer(node, mod.input_binarizer, x, in_shape, f"{node.name}.bits")
        weight = _np(mod.weight)
        if isinstance(mod, BinaryConv2d):
            if mod.groups != 1 or _pair(mod.dilation) != [1, 1]:
                raise self.fail(
                    node,
                    f"binary conv with groups={mod.groups}, dilation={mod.dilation}",
                    "The runtime's binary conv takes groups=1, dilation=1: keep this layer "
                    "float (keep_float=[...] in convert).",
                )
            if not isinstance(mod.padding, tuple | list):
                raise self.fail(node, f"padding={mod.padding!r}", "Use integer padding.")
            attrs = {**_conv_geometry(mod), "pad_value": 0}
            packed = pack_sign_bits(weight.transpose(0, 2, 3, 1))  # [O, kh, kw, C] -> words
            acc = self.emit(
                "bconv2d",
                f"{node.name}.acc",
                [bits],
                out_shape,
                attrs=attrs,
                params={"weight": packed},
            )
        else:
            if len(in_shape) != 2:
                raise self.fail(node, f"binary linear on a rank-{len(in_shape)} input", "")
            attrs = {"in_features": mod.in_features, "out_features": mod.out_features}
            acc = self.emit(
                "bdense",
                f"{node.name}.acc",
                [bits],
                out_shape,
                attrs=attrs,
                params={"weight": pack_sign_bits(weight)},
            )
        scale = _np(mod.weight_scale_values().reshape(-1))
        bias = _np(mod.bias) if mod.bias is not None else np.zeros_like(scale)
        channels = int(scale.shape[0])
        self.env[node] = self.emit(
            "affine",
            node.name,
            [acc],
            out_shape,
            attrs={"channels": channels},
            params={"scale": scale, "bias": bias},
        )

    def lower_binarizer(
        self, node: fx.Node, binarizer: nn.Module, x: str, shape: list[int | None], name: str
    ) -> str:
        channels = int(shape[1])  # type: ignore[arg-type]
        if isinstance(binarizer, DySign):
            fc1 = binarizer.fc1
            activation = str(binarizer.activation)
            if activation not in _DYNAMIC_ACTIVATIONS:
                raise self.fail(node, f"DySign activation {activation!r}", "Use relu.")
            params = _hyper_head(binarizer)
            attrs = {"channels": channels, "hidden": fc1.out_features, "activation": activation}
            return self.emit(
                "dyquantize", name, [x], shape, kind="bits", attrs=attrs, params=params
            )
        if isinstance(binarizer, RSign):
            threshold = _np(binarizer.alpha.reshape(-1))
            threshold = np.broadcast_to(threshold, (channels,))
        elif isinstance(binarizer, SignSTE | ApproxSign | ProgressiveSign):
            threshold = np.zeros(channels)
        else:
            raise self.fail(
                node,
                f"its input binarizer is {type(binarizer).__name__}",
                "A binary layer needs a sign binarizer (SignSTE, ApproxSign, ProgressiveSign, "
                "RSign or DySign) on its input.",
            )
        return self.emit(
            "quantize",
            name,
            [x],
            shape,
            kind="bits",
            attrs={"channels": channels},
            params={"threshold": threshold, "sign": np.ones(channels, dtype=np.int8)},
        )

    def lower_float_conv(self, node: fx.Node, mod: nn.Conv2d) -> None:
        x = self.value(node, node.args[0])
        if mod.padding_mode != "zeros" or not isinstance(mod.padding, tuple | list):
            raise self.fail(
                node,
                f"padding={mod.padding!r}, padding_mode={mod.padding_mode!r}",
                "The runtime pads with zeros by integer amounts.",
            )
        params = {"weight": _f32(_np(mod.weight))}
        if mod.bias is not None:
            params["bias"] = _f32(_np(mod.bias))
        attrs = {**_conv_geometry(mod), "dilation": _pair(mod.dilation), "groups": mod.groups}
        self.env[node] = self.emit(
            "conv2d", node.name, [x], self.shape_of(node), attrs=attrs, params=params
        )

    def lower_float_linear(self, node: fx.Node, mod: nn.Linear) -> None:
        x = self.value(node, node.args[0])
        if len(self.shapes[x]) != 2:
            raise self.fail(node, "linear on a tensor that is not [N, F]", "Flatten first.")
        params = {"weight": _f32(_np(mod.weight))}
        if mod.bias is not None:
            params["bias"] = _f32(_np(mod.bias))
        attrs = {"in_features": mod.in_features, "out_features": mod.out_features}
        self.env[node] = self.emit(
            "dense", node.name, [x], self.shape_of(node), attrs=attrs, params=params
        )

    def lower_batchnorm(self, node: fx.Node, mod: nn.modules.batchnorm._BatchNorm) -> None:
        x = self.value(node, node.args[0])
        if mod.running_mean is None or mod.running_var is None:
            raise self.fail(
                node, "BatchNorm without running statistics", "Use track_running_stats=True."
            )
        scale = 1.0 / np.sqrt(_np(mod.running_var) + mod.eps)
        if mod.weight is not None:
            scale = scale * _np(mod.weight)
        bias = -_np(mod.running_mean) * scale
        if mod.bias is not None:
            bias = bias + _np(mod.bias)
        self.env[node] = self.emit(
            "affine",
            node.name,
            [x],
            self.shape_of(node),
            attrs={"channels": int(scale.shape[0])},
            params={"scale": scale, "bias": bias},
        )

    def lower_activation(self, node: fx.Node, mod: nn.Module) -> None:
        x = self.value(node, node.args[0])
        shape = self.shape_of(node)
        channels = int(shape[1]) if len(shape) > 1 else 1  # type: ignore[arg-type]
        attrs: dict[str, Any] = {}
        params: dict[str, np.ndarray] = {}
        if isinstance(mod, nn.ReLU):
            op = "relu"
        elif isinstance(mod, nn.ReLU6):
            op, attrs = "clamp", {"min": 0.0, "max": 6.0}
        elif isinstance(mod, nn.Hardtanh):
            op, attrs = "clamp", {"min": float(mod.min_val), "max": float(mod.max_val)}
        elif isinstance(mod, nn.LeakyReLU):
            op, attrs = "leaky_relu", {"negative_slope": float(mod.negative_slope)}
        elif isinstance(mod, nn.PReLU):
            op, params = "prelu", {"weight": _f32(_np(mod.weight))}
        elif isinstance(mod, RPReLU):
            op = "rprelu"
            params = {r: _f32(_np(getattr(mod, r))) for r in ("gamma", "zeta", "beta")}
        else:
            assert isinstance(mod, DyPReLU)
            op = "dyprelu"
            params = {**_hyper_head(mod), "beta": _f32(_np(mod.beta))}
            attrs = {"hidden": mod.fc1.out_features, "activation": str(mod.activation)}
        if op in ("prelu", "rprelu", "dyprelu"):
            attrs["channels"] = channels
        self.env[node] = self.emit(op, node.name, [x], shape, attrs=attrs, params=params)

    def lower_pool(self, node: fx.Node, op: str, attrs: dict[str, Any]) -> None:
        x = self.value(node, node.args[0])
        self.env[node] = self.emit(op, node.name, [x], self.shape_of(node), attrs=attrs)

    def lower_maxpool(self, node: fx.Node, mod: nn.MaxPool2d) -> None:
        if _pair(mod.dilation) != [1, 1] or mod.return_indices:
            raise self.fail(node, "max pooling with dilation or indices", "")
        self.lower_pool(
            node, "maxpool2d", _pool_attrs(mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode)
        )

    def lower_avgpool(self, node: fx.Node, mod: nn.AvgPool2d) -> None:
        if mod.divisor_override is not None:
            raise self.fail(node, "avg pooling with divisor_override", "")
        attrs = _pool_attrs(mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode)
        attrs["count_include_pad"] = bool(mod.count_include_pad)
        self.lower_pool(node, "avgpool2d", attrs)

    def lower_adaptive_avgpool(self, node: fx.Node, mod: nn.AdaptiveAvgPool2d) -> None:
        if _pair(mod.output_size) != [1, 1]:  # type: ignore[arg-type]
            raise self.fail(
                node,
                f"adaptive pooling to {mod.output_size}",
                "Only output size 1 (global average pooling) is supported.",
            )
        self.lower_pool(node, "global_avgpool", {})

    def lower_flatten_module(self, node: fx.Node, mod: nn.Flatten) -> None:
        self.lower_flatten(node, mod.start_dim, mod.end_dim)

    def lower_flatten(self, node: fx.Node, start: int = 1, end: int = -1) -> None:
        x = self.value(node, node.args[0])
        if start != 1 or end not in (-1, len(self.shapes[x]) - 1):
            raise self.fail(node, f"flatten({start}, {end})", "Flatten from dim 1 to the end.")
        if len(self.shapes[x]) == 2:
            self.alias(node, x)
            return
        self.env[node] = self.emit("flatten", node.name, [x], self.shape_of(node))

    def lower_upsample(self, node: fx.Node, mode: str, scale: Any) -> None:
        x = self.value(node, node.args[0])
        factors = _pair(scale) if scale is not None else []
        in_shape, out_shape = self.shapes[x], self.shape_of(node)
        if (
            mode != "nearest"
            or scale is None
            or any(float(f) != int(f) for f in _as_list(scale))
            or [out_shape[2], out_shape[3]] != [in_shape[2] * factors[0], in_shape[3] * factors[1]]  # type: ignore[operator]
        ):
            raise self.fail(
                node,
                f"upsampling mode={mode!r} scale={scale!r}",
                "The runtime upsamples by integer factors, mode='nearest'.",
            )
        self.env[node] = self.emit(
            "upsample_nearest", node.name, [x], out_shape, attrs={"scale": factors}
        )

    def lower_upsample_module(self, node: fx.Node, mod: nn.Upsample) -> None:
        self.lower_upsample(node, mod.mode, mod.scale_factor)

    def passthrough(self, node: fx.Node, mod: nn.Module | None = None) -> None:
        self.alias(node, self.value(node, node.args[0]))

    # ---------------------------------------------------------------- functions
    def lower_function(self, node: fx.Node) -> None:
        target = node.target
        args, kwargs = node.args, node.kwargs
        if target in (operator.add, torch.add) and not kwargs:
            if not all(isinstance(a, fx.Node) and isinstance(self.env.get(a), str) for a in args):
                raise self.fail(node, "addition of a constant", "Only tensor + tensor is packed.")
            a, b = (self.value(node, a) for a in args)
            if self.shapes[a] != self.shapes[b]:
                raise self.fail(node, "add with broadcasting", "Shapes must match.")
            self.env[node] = self.emit("add", node.name, [a, b], self.shape_of(node))
        elif target in (torch.cat, torch.concat):
            tensors = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            names = [self.value(node, t) for t in tensors]
            rank = len(self.shapes[names[0]])
            if dim % rank != 1:
                raise self.fail(node, f"concat on dim {dim}", "Concatenate along channels (1).")
            self.env[node] = self.emit(
                "concat", node.name, names, self.shape_of(node), attrs={"axis": 1}
            )
        elif target is torch.flatten:
            start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            self.lower_flatten(node, start, end)
        elif target is F.adaptive_avg_pool2d:
            size = kwargs.get("output_size", args[1] if len(args) > 1 else None)
            if _as_list(size) not in ([1], [1, 1]):
                raise self.fail(node, f"adaptive pooling to {size}", "Use output size 1.")
            self.lower_pool(node, "global_avgpool", {})
        elif target is F.interpolate:
            mode = kwargs.get("mode", "nearest")
            self.lower_upsample(node, mode, kwargs.get("scale_factor"))
        elif target is operator.getitem and not isinstance(self.env.get(args[0]), str):
            self.env[node] = self.env[args[0]][args[1]]
        elif target is getattr and args[1] == "shape":
            self.env[node] = self.shape_of(args[0])
        else:
            raise self.fail(
                node,
                "this function has no runtime op",
                "Express it with modules the packer knows, or keep it out of the graph.",
            )

    def lower_method(self, node: fx.Node) -> None:
        method, args = node.target, node.args
        if method == "size":
            shape = [int(s) for s in args[0].meta["tensor_meta"].shape]
            self.env[node] = shape[args[1]] if len(args) > 1 else shape
        elif method in ("view", "reshape", "flatten"):
            x = self.value(node, args[0])
            out_shape = self.shape_of(node)
            if len(out_shape) != 2 or out_shape[1] != _numel(self.shapes[x][1:]):
                raise self.fail(
                    node,
                    f"{method} to {out_shape}",
                    "Only flattening [N, ...] to [N, F] is packed.",
                )
            self.lower_flatten(node)
        elif method in ("mean",) and _as_list(args[1] if len(args) > 1 else None) == [2, 3]:
            x = self.value(node, args[0])
            pooled = self.emit(
                "global_avgpool", f"{node.name}.pool", [x], [*self.shapes[x][:2], 1, 1]
            )
            if node.kwargs.get("keepdim", False):
                self.env[node] = pooled
            else:
                self.env[node] = self.emit("flatten", node.name, [pooled], self.shape_of(node))
        elif method == "contiguous":
            self.passthrough(node)
        else:
            raise self.fail(
                node,
                f"tensor method .{method}() has no runtime op",
                "Use modules or functions the packer knows.",
            )


def _conv_geometry(conv: nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel": _pair(conv.kernel_size),
        "stride": _pair(conv.stride),
        "padding": _pair(conv.padding),
    }


def _hyper_head(mod: nn.Module) -> dict[str, np.ndarray]:
    """The fc1/fc2 weights of a DySign / DyPReLU per-sample head."""
    return {
        f"{fc}_{role}": _f32(_np(getattr(getattr(mod, fc), role)))
        for fc in ("fc1", "fc2")
        for role in ("weight", "bias")
    }


def _as_list(v: Any) -> list[Any] | None:
    if v is None:
        return None
    return list(v) if isinstance(v, tuple | list) else [v]


def _numel(dims: Sequence[int | None]) -> int:
    return int(np.prod([int(d) for d in dims if d is not None]))


def _pool_attrs(kernel: Any, stride: Any, padding: Any, ceil_mode: bool) -> dict[str, Any]:
    return {
        "kernel": _pair(kernel),
        "stride": _pair(stride if stride is not None else kernel),
        "padding": _pair(padding),
        "ceil_mode": bool(ceil_mode),
    }


def _flatten_outputs(out: Any) -> list[Any]:
    if isinstance(out, tuple | list):
        return [leaf for item in out for leaf in _flatten_outputs(item)]
    if isinstance(out, dict):
        return [leaf for item in out.values() for leaf in _flatten_outputs(item)]
    return [out]


_MODULE_HANDLERS: list[tuple[type, Callable[..., None]]] = [
    # Order matters: binary layers subclass the float ones.
    (BinaryConv2d, _Lowerer.lower_binary_layer),
    (BinaryLinear, _Lowerer.lower_binary_layer),
    (nn.Conv2d, _Lowerer.lower_float_conv),
    (nn.Linear, _Lowerer.lower_float_linear),
    (nn.modules.batchnorm._BatchNorm, _Lowerer.lower_batchnorm),
    (nn.ReLU, _Lowerer.lower_activation),
    (nn.ReLU6, _Lowerer.lower_activation),
    (nn.Hardtanh, _Lowerer.lower_activation),
    (nn.LeakyReLU, _Lowerer.lower_activation),
    (nn.PReLU, _Lowerer.lower_activation),
    (RPReLU, _Lowerer.lower_activation),
    (DyPReLU, _Lowerer.lower_activation),
    (nn.MaxPool2d, _Lowerer.lower_maxpool),
    (nn.AvgPool2d, _Lowerer.lower_avgpool),
    (nn.AdaptiveAvgPool2d, _Lowerer.lower_adaptive_avgpool),
    (nn.Flatten, _Lowerer.lower_flatten_module),
    (nn.Upsample, _Lowerer.lower_upsample_module),
    (nn.Identity, _Lowerer.passthrough),
    (nn.Dropout, _Lowerer.passthrough),
    (nn.Dropout2d, _Lowerer.passthrough),
]


def _module_handler(mod: nn.Module) -> Callable[..., None] | None:
    for kind, handler in _MODULE_HANDLERS:
        if isinstance(mod, kind):
            return handler
    return None


def lower(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Program:
    """Lower ``gm`` (eval mode, hard binarizers) to a :class:`Program` of IR nodes.

    Shapes come from running ``gm`` once on ``example_inputs`` (``ShapeProp``); the batch
    dimension of every value becomes ``None``.
    """
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
        lowerer = _Lowerer(gm)
        inputs, outputs = lowerer.run()
    finally:
        gm.train(was_training)
    return Program(inputs, outputs, lowerer.nodes, lowerer.shapes, lowerer.kinds)
