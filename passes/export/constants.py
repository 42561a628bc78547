"""Tensors a model reads straight from its attributes (FX ``get_attr`` nodes: a parameter or
buffer used in ``forward``, such as ConvNeXt's layer scale ``gamma`` or the weight of
torchvision's ``LayerNorm2d``), a part of ``passes.export.lower``'s
:class:`~passes.export.lower.Lowerer` (which inherits :class:`ConstantLowering`).

The export keeps such a tensor on the Python side as a :class:`Constant` (its value when
``pack`` runs) and packs these uses of it:

- **computed from constants alone** (``gamma.view(-1, 1, 1)``, ``gamma[None, :, None, None]``,
  ``2 * gamma``): evaluated by torch at export, on a copy; the result is a constant again;
- **a per-channel factor or term**: ``y * s``, ``s * y``, ``y + b``, ``b + y`` (also
  ``torch.mul`` / ``torch.add`` and the methods) with ``s``, ``b`` one number or one value per
  channel -> ``affine`` with ``scale = s, bias = 0`` (``y*s + 0 = y*s``) or
  ``scale = 1, bias = b`` (``y*1 + b = y + b``), both exact in float32; ``y * s + b`` is two
  affines that ``passes.export.fold`` merges. Per channel means broadcasting along the channel
  axis only: [C, 1, 1] or [1, C, 1, 1] on [N, C, H, W]; [C] or [1, 1, 1, C] on a channels-last
  view (between ``x.permute(0, 2, 3, 1)`` and ``x.permute(0, 3, 1, 2)``, ConvNeXt's
  ``gamma * y``); [F] or [1, F] on [N, F];
- **F.layer_norm's weight and bias** (``F.layer_norm(x, (C,), weight, bias, eps)``) ->
  ``layernorm_channels``, on a channels-last view or on [N, F].

Any other use of a constant is a ``ConversionError`` naming the node and the attribute.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from passes.export.patterns import LAYOUTS, ChannelsLast

CONSTANT_HELP = (
    "The runtime packs a tensor read from the model (a parameter or buffer used in forward, or "
    "one computed from those alone) only as a per-channel factor or term (y * gamma, y + b: an "
    "affine op) or as F.layer_norm's weight and bias; compute anything else with a module the "
    "packer knows (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm ...)."
)
PER_CHANNEL_HELP = (
    "A constant factor or term must be one number or one value per channel: [C, 1, 1] or "
    "[1, C, 1, 1] on [N, C, H, W]; [C] or [1, 1, 1, C] between x.permute(0, 2, 3, 1) and "
    "x.permute(0, 3, 1, 2) (ConvNeXt's layer scale); [F] or [1, F] on [N, F]."
)

#: The products and sums whose constant operand becomes an affine's scale or bias.
_ROLES: dict[Any, str] = {operator.mul: "scale", torch.mul: "scale", "mul": "scale",
                          operator.add: "bias", torch.add: "bias", "add": "bias"}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Constant:
    """A tensor the graph reads from the model; ``source`` names it in messages (the
    attribute, or ``"<node> (from <attributes>)"`` for one computed from them)."""

    source: str
    tensor: torch.Tensor


class ConstantLowering:
    """The Lowerer's handling of constants (a mixin: it uses the Lowerer's ``gm``, ``env``,
    ``emit``, ``value``, ``fail``, ``arguments`` ...)."""

    gm: fx.GraphModule
    env: dict[fx.Node, Any]

    # ---------------------------------------------------------------- entry points
    def lower_get_attr(self, node: fx.Node) -> None:
        """A ``get_attr`` node: the model's tensor at ``node.target`` becomes a constant."""
        value: Any = self.gm
        for part in str(node.target).split("."):
            value = getattr(value, part, None)
        if not isinstance(value, torch.Tensor):
            raise self.fail(
                node, f"it reads the attribute {node.target!r}, which is not a tensor", ""
            )
        self.env[node] = Constant(str(node.target), value.detach())

    def lower_constants(self, node: fx.Node) -> bool:
        """Lower ``node`` if it reads a constant (see the module docstring): True when done,
        False for F.layer_norm (its handlers read the constants) and for nodes without
        constants; any other use of a constant raises."""
        states = [self.env.get(a) for a in node.all_input_nodes]
        constants = [s for s in states if isinstance(s, Constant)]
        if not constants:
            return False
        tensors = [s for s in states if isinstance(s, (str, *LAYOUTS))]
        if not tensors and node.op in ("call_function", "call_method"):
            self._fold(node, constants)
            return True
        if node.op == "call_function" and node.target is F.layer_norm:
            return False
        role = _ROLES.get(node.target if node.op == "call_function" else str(node.target))
        if node.op in ("call_function", "call_method") and role is not None:
            self._constant_affine(node, role)
            return True
        raise self.fail(
            node, f"it reads the constant tensor {constants[0].source!r}", CONSTANT_HELP
        )

    def lower_layer_norm_function(self, node: fx.Node, target: Any) -> None:
        """``F.layer_norm`` on an [N, F] value (on a channels-last view it is
        ``passes/export/patterns.py``'s, which calls :meth:`layer_norm_call`)."""
        x = self.value(node, node.args[0])
        if len(self.shape(x)) != 1:
            raise self.fail(
                node,
                "F.layer_norm over the last dims of an NCHW tensor",
                "The runtime normalizes over channels: x.permute(0, 2, 3, 1) -> "
                "F.layer_norm(x, (C,), weight, bias, eps) -> x.permute(0, 3, 1, 2), or over "
                "the features of an [N, F] tensor.",
            )
        self.bind(node, self.layer_norm_call(node, x))

    def layer_norm_call(self, node: fx.Node, x: str) -> str:
        """``F.layer_norm(input, normalized_shape, weight, bias, eps)`` over the channels of
        ``x`` -> ``layernorm_channels`` (weight / bias None: ones / zeros)."""
        a = self.arguments(
            node, (("normalized_shape", None), ("weight", None), ("bias", None), ("eps", 1e-5))
        )
        shape = a["normalized_shape"]
        shape = tuple(shape) if isinstance(shape, list | tuple) else (shape,)
        channels = self.shape(x)[0]
        weight, bias = (self._norm_param(node, a[k], channels, k) for k in ("weight", "bias"))
        return self._layernorm(node, x, shape, weight, bias, float(a["eps"]))

    # ---------------------------------------------------------------- helpers
    def _fold(self, node: fx.Node, constants: list[Constant]) -> None:
        """Evaluate a node that reads only constants and Python values, on copies."""

        def concrete(arg: fx.Node) -> Any:
            state = self.env.get(arg)
            return state.tensor.clone() if isinstance(state, Constant) else state

        args = fx.node.map_arg(node.args, concrete)
        kwargs = fx.node.map_arg(node.kwargs, concrete)
        names = ", ".join(dict.fromkeys(c.source for c in constants))
        try:
            with torch.no_grad():
                if node.op == "call_function":
                    result = node.target(*args, **kwargs)
                else:
                    result = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        except Exception as error:  # torch's own message says what was wrong
            raise self.fail(
                node, f"computing it from the constants {names} failed: {error}", CONSTANT_HELP
            ) from error
        source = f"{node.name} (from {names})"
        self.env[node] = fx.node.map_aggregate(
            result, lambda v: Constant(source, v.detach()) if isinstance(v, torch.Tensor) else v
        )

    def _constant_affine(self, node: fx.Node, role: str) -> None:
        """``y * s`` / ``y + b`` with a constant ``s`` / ``b`` -> an affine on ``y``."""
        unknown = sorted(set(node.kwargs) - {"input", "other"})
        operands = [*node.args, *(node.kwargs[k] for k in ("input", "other") if k in node.kwargs)]
        states = [self.env.get(o) if isinstance(o, fx.Node) else o for o in operands]
        constant = [s for s in states if isinstance(s, Constant)]
        tensor = [o for o, s in zip(operands, states) if isinstance(s, (str, *LAYOUTS))]
        if unknown or len(operands) != 2 or len(constant) != 1 or len(tensor) != 1:
            what = "product" if role == "scale" else "sum"
            raise self.fail(
                node,
                f"a {what} of the constants {[c.source for c in constant]} with "
                f"{len(operands)} operands" + (f" and arguments {unknown}" if unknown else ""),
                "Write y * s or y + b with one tensor y of the graph and one constant. "
                + CONSTANT_HELP,
            )
        state = self.env[tensor[0]]
        channels_last = isinstance(state, ChannelsLast)
        x = state.name if channels_last else self.value(node, tensor[0])
        vector = self._per_channel(node, constant[0], tensor[0], channels_last, role)
        channels = len(vector)
        if role == "scale":
            params = {"scale": vector, "bias": np.zeros(channels)}
        else:
            params = {"scale": np.ones(channels), "bias": vector}
        out = self.emit(
            "affine", node.name, [x], self.shape(x), attrs={"channels": channels}, params=params
        )
        self.env[node] = ChannelsLast(out) if channels_last else out

    def _per_channel(
        self, node: fx.Node, constant: Constant, operand: fx.Node, channels_last: bool, role: str
    ) -> np.ndarray:
        """The constant as one float64 value per channel of ``operand``, if it broadcasts
        along the channel axis only (else a ConversionError)."""
        full = [int(d) for d in operand.meta["tensor_meta"].shape]
        meta = node.meta["tensor_meta"]
        shape = list(constant.tensor.shape)
        rank = len(full)
        axis = rank - 1 if channels_last or rank == 2 else 1
        padded = [1] * (rank - len(shape)) + shape
        fits = (
            rank in (2, 4)
            and len(shape) <= rank
            and [int(d) for d in meta.shape] == full
            and all(d == 1 for i, d in enumerate(padded) if i != axis)
            and padded[axis] in (1, full[axis])
        )
        what = "product" if role == "scale" else "sum"
        if not fits:
            raise self.fail(
                node,
                f"a {what} of a {full} tensor and the constant {constant.source!r} of shape "
                f"{shape}",
                PER_CHANNEL_HELP,
            )
        if meta.dtype != torch.float32:
            raise self.fail(
                node,
                f"the {what} with the constant {constant.source!r} ({constant.tensor.dtype}) "
                f"is {meta.dtype}",
                "Keep the constant float32, as the runtime computes.",
            )
        values = constant.tensor.detach().to(torch.float64).cpu().reshape(-1).numpy()
        if not all(math.isfinite(v) and abs(v) <= 3.0e38 for v in values):
            raise self.fail(
                node,
                f"the constant {constant.source!r} holds values beyond float32's finite range",
                "Use finite values within float32.",
            )
        return np.broadcast_to(values, (full[axis],)).copy()

    def _norm_param(self, node: fx.Node, value: Any, channels: int, role: str) -> Any:
        """F.layer_norm's weight / bias as float32[C], or None."""
        if value is None:
            return None
        if not isinstance(value, Constant) or tuple(value.tensor.shape) != (channels,):
            shown = list(value.tensor.shape) if isinstance(value, Constant) else repr(value)
            raise self.fail(
                node,
                f"F.layer_norm's {role} is {shown}",
                f"Pass a constant tensor of shape [{channels}] (a parameter of the module) or "
                "None.",
            )
        return np.ascontiguousarray(value.tensor.detach().cpu().numpy(), dtype=np.float32)


__all__ = ["CONSTANT_HELP", "Constant", "ConstantLowering"]
