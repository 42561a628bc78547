"""Lower a converted (student) ``GraphModule`` to the runtime's op graph (``docs/IR.md``).

Every FX node is looked up in the spellings table (``passes.spellings``) and handled by the
:class:`Lowerer` method its rule names, which emits zero or more registry ops
(``runtime.registry.make_node``):

* ``BinaryConv2d`` / ``BinaryLinear`` -> ``quantize`` (or ``dyquantize`` for DySign) of the
  input, ``bconv2d`` / ``bdense`` on the bits (integer dot products, zero padding), then an
  ``affine`` carrying the weight scale alpha_o and the layer bias: ``y = alpha_o * acc + b``.
  The exported network always uses the hard sign (``x >= threshold``) and sign(W), whatever
  the training schedule left the binarizers at.
* BatchNorm -> ``affine`` with ``scale = gamma / sqrt(var + eps)``, ``bias = beta - mean*scale``.
* float conv / linear, PReLU / RPReLU / DyPReLU, the ReLU family, pools, adds, concats,
  flatten, nearest upsampling -> their op; Identity and Dropout vanish.
* SiLU, Hardswish, Hardsigmoid, Sigmoid, GELU -> their op; a product of two tensors -> ``mul``
  (same shapes, or a squeeze-excitation gate [N, C, 1, 1]), of a tensor and a number ->
  ``affine`` with that scale.
* Multi-node spellings have their own modules, mixed into the :class:`Lowerer`: the layout
  patterns (channel shuffle, channels-last regions) in ``passes/export/patterns.py``, channel
  splits (``x.chunk(2, dim=1)``, ``x[:, a:b]``) in ``passes/export/split.py``, and the tensors
  read from the model's attributes (``get_attr``: layer scales, ``F.layer_norm``'s weight) in
  ``passes/export/constants.py``.

Anything else raises :class:`operators.errors.ConversionError` naming the node, the user's
module and source line, and what to do. ``passes.export.fold`` then merges affines and folds
them into the binarizer thresholds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from operators import (
    ApproxSign,
    BinaryConv2d,
    DyPReLU,
    DySign,
    ProgressiveSign,
    RPReLU,
    RSign,
    SignSTE,
)
from operators.errors import ConversionError
from passes import spellings
from passes.export.constants import ConstantLowering
from passes.export.patterns import LAYOUTS, PatternLowering
from passes.export.split import ChannelPieces, ChannelSplitLowering
from runtime.errors import InvalidModelError
from runtime.ops.hyper import ACTIVATIONS as _DYNAMIC_ACTIVATIONS
from runtime.registry import make_node
from runtime.schema import Graph, Node, TensorSpec, ValueInfo


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _pair(v: int | float | Sequence[int | float]) -> list[int]:
    """[h, w] of an int, an integral float (``nn.Upsample`` stores 2.0) or a pair of them."""
    values = list(v) if isinstance(v, tuple | list) else [v, v]
    if len(values) != 2 or any(float(x) != int(x) for x in values):
        raise ValueError(f"{v!r} is not an integer or a pair of integers")
    return [int(x) for x in values]


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


class Lowerer(ConstantLowering, ChannelSplitLowering, PatternLowering):
    """Walks the FX graph once, emitting registry nodes and tracking every value's info.

    Each handler ``lower_<rule.handler>(node, target)`` reads one FX node (``target`` is the
    module of a ``call_module`` node, else the called function or method name).
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.values: dict[str, ValueInfo] = {}
        self.env: dict[fx.Node, Any] = {}  # fx node -> value name, or a python value (sizes)
        # or a layout state of passes/export/patterns.py; nodes whose tensor_meta is NHWC:
        self.channels_last_nodes: set[fx.Node] = set()
        # fx nodes that are one tensor in torch because in-place calls returned their input
        self.aliases: dict[fx.Node, list[fx.Node]] = {}

    # ---------------------------------------------------------------- helpers
    def fail(self, node: fx.Node, why: str, fix: str) -> ConversionError:
        return ConversionError(f"cannot pack {describe_node(self.gm, node)}: {why}. {fix}")

    def shape_of(self, node: fx.Node) -> tuple[int, ...]:
        """The node's output shape without the batch dimension (from shape propagation)."""
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.fail(node, "it does not produce a single tensor", "Return tensors only.")
        shape = tuple(int(s) for s in meta.shape[1:])
        if node in self.channels_last_nodes:  # torch's [N, H, W, C] of an NCHW value
            return (shape[-1], *shape[:-1])
        return shape

    def value(self, node: fx.Node, arg: Any, kind: str = "float") -> str:
        if not isinstance(arg, fx.Node) or arg not in self.env:
            raise self.fail(
                node, f"its input {arg!r} is not a tensor of the graph", "Pass tensors only."
            )
        name = self.env[arg]
        if isinstance(name, LAYOUTS):
            raise self.layout_error(node, name)
        if not isinstance(name, str):
            raise self.fail(node, f"its input {arg.name} is not a tensor", "Pass tensors only.")
        if self.values[name].kind != kind:
            raise self.fail(
                node,
                f"it reads {self.values[name].kind} values where the runtime needs {kind}",
                "Binarizers may only feed binary layers (BinaryConv2d / BinaryLinear).",
            )
        return name

    def shape(self, name: str) -> tuple[int, ...]:
        return self.values[name].shape

    def emit(
        self,
        op: str,
        name: str,
        inputs: list[str],
        shape: Sequence[int],
        *,
        kind: str = "float",
        attrs: dict[str, Any] | None = None,
        params: dict[str, np.ndarray] | None = None,
    ) -> str:
        self.nodes.append(make_node(op, name, inputs, attrs, params))
        self.values[name] = ValueInfo(kind, tuple(int(s) for s in shape))
        return name

    def bind(self, node: fx.Node, emitted: str) -> None:
        self.env[node] = emitted

    # ---------------------------------------------------------------- driver
    def run(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = self.shape_of(node)
                self.values[node.name] = ValueInfo("float", shape)
                self.env[node] = node.name
                inputs.append(TensorSpec(node.name, (None, *shape)))
            elif node.op == "output":
                outputs = self.lower_outputs(node)
            elif node.op == "get_attr":
                self.lower_get_attr(node)
            else:
                self.lower_call(node)
        return inputs, outputs

    def lower_outputs(self, node: fx.Node) -> list[TensorSpec]:
        """The graph outputs: a tensor, tuples / lists of tensors (in order), or a dict of
        tensors by string key (fcn_resnet50's ``{"out": x, "aux": y}``), whose keys become the
        outputs' keys, so ``Model.predict`` returns a dict with the same keys."""
        result = node.args[0]
        if isinstance(result, dict):
            bad = [
                k for k, v in result.items() if not isinstance(k, str) or not isinstance(v, fx.Node)
            ]
            if bad:
                raise self.fail(
                    node,
                    f"the model returns a dict whose entries {bad} are not tensors by string key",
                    "Return a tensor, a tuple of tensors or a dict of tensors by string key.",
                )
            items: list[tuple[str | None, Any]] = list(result.items())
        else:
            items = [(None, arg) for arg in _flatten_outputs(result)]
        specs: list[TensorSpec] = []
        for key, arg in items:
            name = self.value(node, arg)
            if any(spec.name == name for spec in specs):
                raise self.fail(node, f"it returns the tensor {arg} twice", "Return it once.")
            specs.append(TensorSpec(name, (None, *self.shape(name)), key=key))
        return specs

    def target_of(self, node: fx.Node) -> Any:
        """The module a call_module node calls, else the called function or method name."""
        if node.op == "call_module":
            return self.modules[str(node.target)]
        return node.target if node.op == "call_function" else str(node.target)

    def rule_of(self, node: fx.Node) -> spellings.Rule | None:
        """The spellings-table rule of a call node, or None."""
        target = self.target_of(node)
        if node.op == "call_module":
            return spellings.module_rule(target)
        if node.op == "call_function":
            return spellings.function_rule(target)
        return spellings.method_rule(target)

    def lower_call(self, node: fx.Node) -> None:
        """Dispatch a call node: uses of constants (``passes/export/constants.py``), shape
        arithmetic and the layout patterns (``passes/export/patterns.py``) first, then the
        spellings table."""
        if self.lower_constants(node) or self.lower_structure(node):
            return
        target, rule = self.target_of(node), self.rule_of(node)
        if rule is None and target is getattr:
            return self.lower_getattr(node)
        if node.op == "call_module":
            what = f"module type {type(target).__name__}"
        elif node.op == "call_function":
            what = f"function {getattr(target, '__name__', target)}"
        else:
            what = f"tensor method .{target}()"
        if rule is None:
            raise self.fail(
                node,
                f"{what} has no runtime op",
                "The supported layers and spellings are listed in the README (from "
                "passes/spellings.py): rewrite it with one of them, or keep it out of the "
                "exported graph.",
            )
        getattr(self, f"lower_{rule.handler}")(node, target)

    # ---------------------------------------------------------------- binary layers
    def lower_binary_layer(self, node: fx.Node, mod: nn.Module) -> None:
        x = self.value(node, node.args[0])
        in_shape = self.shape(x)
        out_shape = self.shape_of(node)
        bits = self.lower_binarizer(node, mod.input_binarizer, x, f"{node.name}.bits")
        weight = _np(mod.weight)
        if isinstance(mod, BinaryConv2d):
            reason = spellings.binary_conv_unsupported(mod)
            if reason is not None:
                raise self.fail(
                    node,
                    f"binary conv with {reason}",
                    "Keep this layer float (keep_float=[...] in convert).",
                )
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
            if len(in_shape) != 1:
                raise self.fail(
                    node,
                    f"binary linear on a rank-{len(in_shape) + 1} input",
                    "Flatten to [N, F] first, or keep this layer float.",
                )
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
        self.bind(
            node,
            self.emit(
                "affine",
                node.name,
                [acc],
                out_shape,
                attrs={"channels": int(scale.shape[0])},
                params={"scale": scale, "bias": bias},
            ),
        )

    def lower_binarizer(self, node: fx.Node, binarizer: nn.Module, x: str, name: str) -> str:
        shape = self.shape(x)
        channels = int(shape[0])
        if isinstance(binarizer, DySign):
            activation = str(binarizer.activation)
            if activation not in _DYNAMIC_ACTIVATIONS:
                raise self.fail(
                    node, f"DySign activation {activation!r}", f"Use one of {_DYNAMIC_ACTIVATIONS}."
                )
            attrs = {
                "channels": channels,
                "hidden": binarizer.fc1.out_features,
                "activation": activation,
            }
            return self.emit(
                "dyquantize",
                name,
                [x],
                shape,
                kind="bits",
                attrs=attrs,
                params=_hyper_head(binarizer),
            )
        if isinstance(binarizer, RSign):
            threshold = np.broadcast_to(_np(binarizer.alpha.reshape(-1)), (channels,))
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

    # ---------------------------------------------------------------- float layers
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
        self.bind(
            node,
            self.emit("conv2d", node.name, [x], self.shape_of(node), attrs=attrs, params=params),
        )

    def lower_float_linear(self, node: fx.Node, mod: nn.Linear) -> None:
        x = self.value(node, node.args[0])
        if len(self.shape(x)) != 1:
            raise self.fail(node, "linear on a tensor that is not [N, F]", "Flatten first.")
        params = {"weight": _f32(_np(mod.weight))}
        if mod.bias is not None:
            params["bias"] = _f32(_np(mod.bias))
        attrs = {"in_features": mod.in_features, "out_features": mod.out_features}
        self.bind(
            node,
            self.emit("dense", node.name, [x], self.shape_of(node), attrs=attrs, params=params),
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
        self.bind(
            node,
            self.emit(
                "affine",
                node.name,
                [x],
                self.shape_of(node),
                attrs={"channels": int(scale.shape[0])},
                params={"scale": scale, "bias": bias},
            ),
        )

    def lower_activation(self, node: fx.Node, mod: nn.Module) -> None:
        x = self.value(node, node.args[0])
        shape = self.shape_of(node)
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
            attrs["channels"] = int(shape[0])
        self.bind(node, self.emit(op, node.name, [x], shape, attrs=attrs, params=params))

    def lower_passthrough(self, node: fx.Node, target: Any) -> None:
        self.bind(node, self.value(node, node.args[0]))

    # ---------------------------------------------------------------- float elementwise
    def lower_silu(self, node: fx.Node, target: Any) -> None:
        self._elementwise(node, target, "silu")

    def lower_hardswish(self, node: fx.Node, target: Any) -> None:
        self._elementwise(node, target, "hardswish")

    def lower_hardsigmoid(self, node: fx.Node, target: Any) -> None:
        self._elementwise(node, target, "hardsigmoid")

    def lower_sigmoid(self, node: fx.Node, target: Any) -> None:
        self._elementwise(node, target, "sigmoid")

    def lower_gelu(self, node: fx.Node, target: Any) -> None:
        self._elementwise(node, target, "gelu")

    def _elementwise(self, node: fx.Node, target: Any, op: str) -> None:
        """A module (``nn.SiLU``...), function (``F.silu``...) or method (``x.sigmoid()``) call
        -> ``op``. An in-place call (``inplace=True``) overwrites its input: the later readers
        of the input, and of every node that is the same tensor (the results of earlier
        in-place calls on it), read the result, as in torch."""
        if isinstance(target, nn.Module):
            options = {"inplace": getattr(target, "inplace", False)}
            if op == "gelu":
                options["approximate"] = target.approximate
        else:
            options = self.arguments(node, _ELEMENTWISE_SIGNATURES[op])
        source = node.args[0] if node.args else node.kwargs.get("input")
        x = self.value(node, source)
        attrs: dict[str, Any] = {}
        if op == "gelu":
            if options["approximate"] not in ("none", "tanh"):
                raise self.fail(
                    node,
                    f"GELU with approximate={options['approximate']!r}",
                    "Use approximate='none' or 'tanh'.",
                )
            attrs["approximate"] = options["approximate"]
        result = self.emit(op, node.name, [x], self.shape_of(node), attrs=attrs)
        self.bind(node, result)
        if options.get("inplace"):
            same_tensor = self.aliases.setdefault(source, [source])
            same_tensor.append(node)
            self.aliases[node] = same_tensor
            for alias in same_tensor:
                self.bind(alias, result)

    def lower_mul(self, node: fx.Node, target: Any) -> None:
        """``a * b``, ``torch.mul(a, b)``, ``a.mul(b)`` (``mul_`` / ``*=`` are made out of
        place by canonicalization first).

        Tensor * tensor -> ``mul``, with the operands ordered so that a per-channel gate
        [N, C, 1, 1] is the second (float32 multiplication commutes exactly); tensor * number
        -> ``affine`` with scale = that number and bias 0 (x*s + 0 = x*s); number * number
        (shape arithmetic such as ``x.size(1) * x.size(2)``) -> a Python number.
        """
        unknown = sorted(set(node.kwargs) - {"input", "other"})
        operands = [*node.args, *(node.kwargs[k] for k in ("input", "other") if k in node.kwargs)]
        if unknown or len(operands) != 2:
            raise self.fail(node, f"multiplication with arguments {unknown}", "Write it a * b.")
        values = [self.env.get(o) if isinstance(o, fx.Node) else o for o in operands]
        tensors = [i for i, v in enumerate(values) if isinstance(v, str)]
        numbers = [i for i, v in enumerate(values) if _is_number(v)]
        if len(numbers) == 2:
            self.env[node] = values[0] * values[1]
            return
        if len(tensors) == 1 and len(numbers) == 1:
            self._scale(node, self.value(node, operands[tensors[0]]), values[numbers[0]])
            return
        if len(tensors) != 2:
            raise self.fail(
                node,
                f"multiplication of {', '.join(type(v).__name__ for v in values)}",
                "Multiply tensors of the graph, or a tensor by a constant number.",
            )
        a, b = (self.value(node, o) for o in operands)
        sa, sb = self.shape(a), self.shape(b)
        full = [[int(d) for d in o.meta["tensor_meta"].shape] for o in operands]
        if full[0][0] != full[1][0] or not (sa == sb or _is_gate(sa, sb) or _is_gate(sb, sa)):
            raise self.fail(
                node,
                f"multiplication with broadcasting ({full[0]} * {full[1]})",
                "The runtime multiplies tensors of the same shape, or an [N, C, H, W] tensor by "
                "a per-channel gate [N, C, 1, 1] (squeeze-excitation: global average pooling, "
                "1x1 convs, an activation, then the product); bring the factor to one of these "
                "shapes or keep this computation out of the exported graph.",
            )
        inputs = [b, a] if _is_gate(sb, sa) else [a, b]
        self.bind(node, self.emit("mul", node.name, inputs, self.shape_of(node)))

    def _scale(self, node: fx.Node, x: str, factor: float) -> None:
        if not math.isfinite(factor) or abs(factor) > 3.0e38:
            raise self.fail(
                node, f"multiplication by {factor!r}", "Use a finite factor within float32."
            )
        channels = int(self.shape(x)[0])
        params = {
            "scale": np.full(channels, factor, np.float32),
            "bias": np.zeros(channels, np.float32),
        }
        self.bind(
            node,
            self.emit(
                "affine",
                node.name,
                [x],
                self.shape_of(node),
                attrs={"channels": channels},
                params=params,
            ),
        )

    # ---------------------------------------------------------------- pooling
    def _pool(self, node: fx.Node, op: str, attrs: dict[str, Any]) -> None:
        x = self.value(node, node.args[0])
        self.bind(node, self.emit(op, node.name, [x], self.shape_of(node), attrs=attrs))

    def _maxpool(self, node: fx.Node, a: dict[str, Any]) -> None:
        if _pair(a["dilation"]) != [1, 1] or a["return_indices"]:
            raise self.fail(
                node, "max pooling with dilation or indices", "Use dilation 1, no indices."
            )
        self._pool(node, "maxpool2d", _pool_attrs(a))

    def _avgpool(self, node: fx.Node, a: dict[str, Any]) -> None:
        if a["divisor_override"] is not None:
            raise self.fail(node, "avg pooling with divisor_override", "Leave it None.")
        attrs = _pool_attrs(a)
        attrs["count_include_pad"] = bool(a["count_include_pad"])
        self._pool(node, "avgpool2d", attrs)

    def lower_maxpool_module(self, node: fx.Node, mod: nn.MaxPool2d) -> None:
        self._maxpool(node, {k: getattr(mod, k) for k in _MAXPOOL_ARGS} | _KERNEL_ALIAS(mod))

    def lower_maxpool_function(self, node: fx.Node, target: Any) -> None:
        self._maxpool(node, self.arguments(node, _MAXPOOL_SIGNATURE))

    def lower_avgpool_module(self, node: fx.Node, mod: nn.AvgPool2d) -> None:
        self._avgpool(node, {k: getattr(mod, k) for k in _AVGPOOL_ARGS} | _KERNEL_ALIAS(mod))

    def lower_avgpool_function(self, node: fx.Node, target: Any) -> None:
        self._avgpool(node, self.arguments(node, _AVGPOOL_SIGNATURE))

    def _adaptive_pool(self, node: fx.Node, kind: str, return_indices: bool = False) -> None:
        """Adaptive average / max pooling to any size (read from shape propagation, so None
        entries need no parsing): nothing when it keeps the input's size (VGG's 7x7 on 224
        inputs), ``global_avgpool`` for an average to 1x1, else ``adaptive_<kind>pool2d``."""
        if return_indices:
            raise self.fail(node, "adaptive max pooling with indices", "Leave them off.")
        x = self.value(node, node.args[0])
        shape, out = self.shape(x), self.shape_of(node)
        if len(shape) != 3:
            raise self.fail(node, f"adaptive pooling of {list(shape)}", "Pool [N, C, H, W].")
        if out == shape:  # every bin is one pixel
            self.bind(node, x)
        elif kind == "avg" and out[1:] == (1, 1):
            self._pool(node, "global_avgpool", {})
        else:
            self._pool(node, f"adaptive_{kind}pool2d", {"size": list(out[1:])})

    def lower_adaptive_avgpool_module(self, node: fx.Node, mod: nn.AdaptiveAvgPool2d) -> None:
        self._adaptive_pool(node, "avg")

    def lower_adaptive_avgpool_function(self, node: fx.Node, target: Any) -> None:
        self.arguments(node, (("output_size", _REQUIRED),))
        self._adaptive_pool(node, "avg")

    def lower_adaptive_maxpool_module(self, node: fx.Node, mod: nn.AdaptiveMaxPool2d) -> None:
        self._adaptive_pool(node, "max", mod.return_indices)

    def lower_adaptive_maxpool_function(self, node: fx.Node, target: Any) -> None:
        a = self.arguments(node, (("output_size", _REQUIRED), ("return_indices", False)))
        self._adaptive_pool(node, "max", a["return_indices"])

    def lower_mean(self, node: fx.Node, target: Any) -> None:
        a = self.arguments(node, (("dim", None), ("keepdim", False), ("dtype", None)))
        x = self.value(node, node.args[0])
        dims = sorted(d % 4 for d in _as_list(a["dim"]) or []) if len(self.shape(x)) == 3 else []
        if dims != [2, 3] or a["dtype"] is not None:
            raise self.fail(
                node, f"mean over dims {a['dim']!r}", "Average over the spatial dims (2, 3)."
            )
        shape = self.shape(x)
        pooled = self.emit("global_avgpool", f"{node.name}.pool", [x], (shape[0], 1, 1))
        if a["keepdim"]:
            self.bind(node, pooled)
        else:
            self.bind(node, self.emit("flatten", node.name, [pooled], self.shape_of(node)))

    # ---------------------------------------------------------------- structure
    def lower_add(self, node: fx.Node, target: Any) -> None:
        args = list(node.args)
        if (
            node.kwargs
            or len(args) != 2
            or not all(isinstance(a, fx.Node) and isinstance(self.env.get(a), str) for a in args)
        ):
            raise self.fail(
                node, "addition of a constant or with alpha", "Only tensor + tensor is packed."
            )
        a, b = (self.value(node, arg) for arg in args)
        if self.shape(a) != self.shape(b):
            raise self.fail(
                node,
                f"add with broadcasting ({list(self.shape(a))} + {list(self.shape(b))})",
                "Shapes must match.",
            )
        self.bind(node, self.emit("add", node.name, [a, b], self.shape_of(node)))

    def lower_concat(self, node: fx.Node, target: Any) -> None:
        a = self.arguments(node, (("dim", 0),), first="tensors")
        if not isinstance(a["tensors"], list | tuple):
            raise self.fail(
                node,
                "it concatenates a tuple made by another node",
                "Pass the tensors themselves: torch.cat((a, b), dim=1).",
            )
        names = [self.value(node, t) for t in a["tensors"]]
        rank = len(self.shape(names[0])) + 1
        if a["dim"] % rank != 1:
            raise self.fail(node, f"concat on dim {a['dim']}", "Concatenate along channels (1).")
        self.bind(
            node, self.emit("concat", node.name, names, self.shape_of(node), attrs={"axis": 1})
        )

    def _flatten(self, node: fx.Node, start: int, end: int) -> None:
        x = self.value(node, node.args[0])
        rank = len(self.shape(x)) + 1
        if start % rank != 1 or end % rank != rank - 1:
            raise self.fail(node, f"flatten({start}, {end})", "Flatten from dim 1 to the end.")
        if rank == 2:
            self.bind(node, x)
            return
        self.bind(node, self.emit("flatten", node.name, [x], self.shape_of(node)))

    def lower_flatten_module(self, node: fx.Node, mod: nn.Flatten) -> None:
        self._flatten(node, mod.start_dim, mod.end_dim)

    def lower_flatten_function(self, node: fx.Node, target: Any) -> None:
        a = self.arguments(node, (("start_dim", 0), ("end_dim", -1)))
        self._flatten(node, a["start_dim"], a["end_dim"])

    def lower_reshape_method(self, node: fx.Node, method: str) -> None:
        x = self.value(node, node.args[0])
        out_shape = self.shape_of(node)
        if method == "flatten":
            a = self.arguments(node, (("start_dim", 0), ("end_dim", -1)))
            self._flatten(node, a["start_dim"], a["end_dim"])
            return
        if len(out_shape) != 1 or out_shape[0] != math.prod(self.shape(x)):
            raise self.fail(
                node,
                f"{method} to [N, {', '.join(map(str, out_shape))}]",
                "Only flattening [N, ...] to [N, F] is packed.",
            )
        self._flatten(node, 1, -1)

    def _upsample(self, node: fx.Node, mode: str, scale: Any, size: Any) -> None:
        x = self.value(node, node.args[0])
        in_shape, out_shape = self.shape(x), self.shape_of(node)
        factors = None
        if scale is not None:
            try:
                factors = _pair(scale)
            except (TypeError, ValueError):
                factors = None
        elif size is not None:  # an explicit size that is an integer multiple works too
            sizes = _as_list(size) or []
            if len(sizes) == 1:
                sizes = sizes * 2
            if all(s % i == 0 for s, i in zip(sizes, in_shape[1:])):
                factors = [s // i for s, i in zip(sizes, in_shape[1:])]
        if (
            mode != "nearest"
            or factors is None
            or (out_shape[1], out_shape[2]) != (in_shape[1] * factors[0], in_shape[2] * factors[1])
        ):
            raise self.fail(
                node,
                f"upsampling mode={mode!r} scale_factor={scale!r} size={size!r}",
                "The runtime upsamples by integer factors, mode='nearest'.",
            )
        self.bind(
            node,
            self.emit("upsample_nearest", node.name, [x], out_shape, attrs={"scale": factors}),
        )

    def _upsample_bilinear(
        self, node: fx.Node, scale: Any, align_corners: bool | None, recompute: bool | None
    ) -> None:
        """Bilinear resampling to the propagated output size. With a scale_factor (and no
        recompute_scale_factor) torch maps coordinates by 1/scale rather than by the sizes,
        which is the same exactly when the factor is integral."""
        x = self.value(node, node.args[0])
        if scale is not None and not recompute:
            try:
                _pair(scale)
            except (TypeError, ValueError):
                raise self.fail(
                    node,
                    f"bilinear upsampling by scale_factor={scale!r}",
                    "Use an integral factor, or pass size= (or recompute_scale_factor=True).",
                ) from None
        out = self.shape_of(node)
        attrs = {"size": list(out[1:]), "align_corners": bool(align_corners)}
        self.bind(node, self.emit("upsample_bilinear", node.name, [x], out, attrs=attrs))

    def lower_upsample_module(self, node: fx.Node, mod: nn.Upsample) -> None:
        if mod.mode == "bilinear":
            self._upsample_bilinear(
                node, mod.scale_factor, mod.align_corners, mod.recompute_scale_factor
            )
            return
        self._upsample(node, mod.mode, mod.scale_factor, mod.size)

    def lower_interpolate(self, node: fx.Node, target: Any) -> None:
        a = self.arguments(node, _INTERPOLATE_SIGNATURE)
        if a["mode"] == "bilinear" and not a["antialias"]:
            self._upsample_bilinear(
                node, a["scale_factor"], a["align_corners"], a["recompute_scale_factor"]
            )
            return
        if a["align_corners"] or a["antialias"]:
            raise self.fail(node, "interpolate with align_corners/antialias", "Leave them off.")
        self._upsample(node, a["mode"], a["scale_factor"], a["size"])

    # ---------------------------------------------------------------- python plumbing
    def lower_size(self, node: fx.Node, method: str) -> None:
        shape = [int(s) for s in node.args[0].meta["tensor_meta"].shape]
        self.env[node] = shape[node.args[1]] if len(node.args) > 1 else shape

    def lower_getitem(self, node: fx.Node, target: Any) -> None:
        """Indexing: a piece of a channel split or a channel slice of a tensor
        (``passes/export/split.py``), or an item of a Python value (``x.size()[1]``)."""
        source = self.env.get(node.args[0])
        if isinstance(source, str | ChannelPieces):
            self.lower_channel_index(node, source)
            return
        if source is None or isinstance(source, LAYOUTS):
            raise self.fail(node, "indexing a value that is not a tensor", "Index tensors only.")
        self.env[node] = source[node.args[1]]

    def lower_getattr(self, node: fx.Node) -> None:
        if node.args[1] != "shape":
            raise self.fail(node, f"reading tensor attribute {node.args[1]!r}", "")
        self.env[node] = [int(s) for s in node.args[0].meta["tensor_meta"].shape]

    def arguments(
        self, node: fx.Node, signature: Sequence[tuple[str, Any]], first: str = "input"
    ) -> dict[str, Any]:
        """The call's arguments after ``first`` by name (positional or keyword), defaults
        filled in; a graph value where a constant is expected is an error."""
        values = dict(signature)
        names = [name for name, _ in signature]
        for name, value in zip(names, node.args[1:]):
            values[name] = value
        for name, value in node.kwargs.items():
            if name == first:
                continue
            if name not in values:
                raise self.fail(node, f"argument {name}={value!r}", "Leave it at its default.")
            values[name] = value
        if first == "tensors":
            values[first] = node.args[0] if node.args else node.kwargs[first]
        for name, value in values.items():  # sizes computed in the graph (x.shape[-2:])
            if name != first and isinstance(value, fx.Node) and _is_python(self.env.get(value)):
                values[name] = self.env[value]
        missing = [k for k, v in values.items() if v is _REQUIRED]
        constant = [k for k, v in values.items() if isinstance(v, fx.Node) and k != first]
        if missing or constant:
            raise self.fail(
                node, f"arguments {missing or constant} are missing or computed", "Pass constants."
            )
        return values


_REQUIRED = object()
_MAXPOOL_SIGNATURE = (
    ("kernel_size", _REQUIRED),
    ("stride", None),
    ("padding", 0),
    ("dilation", 1),
    ("ceil_mode", False),
    ("return_indices", False),
)
_AVGPOOL_SIGNATURE = (
    ("kernel_size", _REQUIRED),
    ("stride", None),
    ("padding", 0),
    ("ceil_mode", False),
    ("count_include_pad", True),
    ("divisor_override", None),
)
_ELEMENTWISE_SIGNATURES: dict[str, tuple[tuple[str, Any], ...]] = {
    "silu": (("inplace", False),),
    "hardswish": (("inplace", False),),
    "hardsigmoid": (("inplace", False),),
    "sigmoid": (),
    "gelu": (("approximate", "none"),),
}
_MAXPOOL_ARGS = ("stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL_ARGS = ("stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_INTERPOLATE_SIGNATURE = (
    ("size", None),
    ("scale_factor", None),
    ("mode", "nearest"),
    ("align_corners", None),
    ("recompute_scale_factor", None),
    ("antialias", False),
)


def _KERNEL_ALIAS(mod: nn.Module) -> dict[str, Any]:
    return {"kernel_size": mod.kernel_size}


_TORCH_DIR = os.path.dirname(torch.__file__)


def describe_node(gm: fx.GraphModule, node: fx.Node) -> str:
    """``node 'x' (call_function max_pool2d) in module 'layer1.0' at model.py:42: <line>``:
    the node, the user's module that made it and the source line, as far as FX recorded."""
    target = getattr(node.target, "__name__", node.target)
    text = f"node '{node.name}' ({node.op} {target})"
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        if path:
            text += f" in module '{path}'"
    elif node.op == "call_module":
        text += f" (module '{node.target}')"
    trace = node.meta.get("stack_trace") or node.stack_trace
    if trace:
        lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
        frames = [line for line in lines if line.startswith("File ") and _TORCH_DIR not in line]
        where = frames[-1] if frames else None
        if where is not None:
            position = lines.index(where)
            source = lines[position + 1] if position + 1 < len(lines) else ""
            text += f" at {where[5:]}" + (f": {source}" if source else "")
    return text


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


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_gate(big: tuple[int, ...], small: tuple[int, ...]) -> bool:
    """Whether ``small`` is a per-channel gate [C, 1, 1] of the [C, H, W] shape ``big``."""
    return len(big) == 3 and small == (big[0], 1, 1)


def _as_list(v: Any) -> list[Any] | None:
    if v is None:
        return None
    return list(v) if isinstance(v, tuple | list) else [v]


def _pool_attrs(a: dict[str, Any]) -> dict[str, Any]:
    kernel = a["kernel_size"]
    stride = a["stride"]
    return {
        "kernel": _pair(kernel),
        "stride": _pair(stride if stride not in (None, [], ()) else kernel),
        "padding": _pair(a["padding"]),
        "ceil_mode": bool(a["ceil_mode"]),
    }


def _is_python(value: Any) -> bool:
    """A Python value of the shape arithmetic (not a graph tensor, nor unknown)."""
    return value is not None and not isinstance(value, (str, *LAYOUTS))


def _flatten_outputs(out: Any) -> list[Any]:
    if isinstance(out, tuple | list):
        return [leaf for item in out for leaf in _flatten_outputs(item)]
    if isinstance(out, dict):
        return [leaf for item in out.values() for leaf in _flatten_outputs(item)]
    return [out]


def lower(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Graph:
    """Lower ``gm`` (eval mode, hard binarizers) to a runtime :class:`~runtime.schema.Graph`.

    Shapes come from running ``gm`` once on ``example_inputs`` (``ShapeProp``); the batch
    dimension of every value is left open.
    """
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
        lowerer = Lowerer(gm)
        try:
            inputs, outputs = lowerer.run()
        except InvalidModelError as error:  # a node the registry's builder refused
            raise ConversionError(f"cannot pack: {error}") from error
    finally:
        gm.train(was_training)
    return Graph(inputs, outputs, lowerer.nodes, lowerer.values)
