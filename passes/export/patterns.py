"""Multi-node torch spellings the export lowers as a whole (a part of ``passes.export.lower``'s
:class:`~passes.export.lower.Lowerer`, which inherits :class:`PatternLowering`).

**Shape arithmetic.** ``x.size(1) // groups`` and the like run on Python numbers while
tracing records them as FX nodes (``operator.floordiv`` ...); the export evaluates them.

**Channels-last regions (ConvNeXt).** ``y = x.permute(0, 2, 3, 1)`` makes an NHWC view of an
NCHW value ``v``. The runtime keeps ``v`` (its runtime layout is NHWC anyway) and remembers
that the FX node means "``v`` seen channels-last" (:class:`ChannelsLast`). Inside the region:

- ``nn.LayerNorm(C)`` and ``F.layer_norm(y, (C,), weight, bias, eps)`` (torchvision's
  ``LayerNorm2d``; weight and bias constants of ``passes/export/constants.py``) normalize each
  pixel's channel vector -> ``layernorm_channels`` on ``v``;
- ``nn.Linear(C, O)`` mixes each pixel's channels: ``y[n, h, w, :] = W x[n, h, w, :] + b`` is
  a 1x1 convolution with weight ``W[:, :, None, None]`` -> ``conv2d`` (a ``BinaryLinear``:
  ``quantize`` + 1x1 ``bconv2d`` + ``affine``);
- an op that is elementwise (its handler emits only :data:`LAYOUT_FREE_OPS`, a shared-slope
  PReLU, a same-shape ``mul`` or an ``affine`` with one scale and bias for all channels, such
  as ``y * 0.5``) computes the same numbers in either layout, so it runs on the NCHW values;
- a product or sum with a per-channel constant (ConvNeXt's layer scale ``gamma * y``, gamma of
  shape [C]) is an ``affine`` on ``v`` (``passes/export/constants.py``);
- ``permute(0, 3, 1, 2)`` ends the region: the FX node is ``v`` again.

Anything else inside the region is a ``ConversionError`` that says what works.

**Channel shuffle (ShuffleNet).** ``x.view(n, g, c // g, h, w)`` (:class:`ChannelGroups`) ->
``torch.transpose(x, 1, 2)`` (or ``x.transpose(1, 2)``, ``x.permute(0, 2, 1, 3, 4)``) ->
``.contiguous()`` -> ``x.view(n, -1, h, w)`` (or ``reshape``, ``flatten(1, 2)``) is one
``channel_shuffle`` with ``groups = g``: after the view, channel ``i*(c/g) + j`` sits at
[i, j]; the transpose moves it to [j, i], which the last view flattens to ``j*g + i``. A
rank-5 view is accepted only as the start of this pattern.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from operators import ApproxSign, BinaryLinear, ProgressiveSign, SignSTE
from passes.export.split import SPLIT_HELP, ChannelPieces

#: Python operators that tracing records on sizes (``x.size(1) // 2``); evaluated at export
#: (a product of numbers is the ``mul`` rule's, ``Lowerer.lower_mul``).
PYTHON_ARITHMETIC = (
    operator.add,
    operator.sub,
    operator.floordiv,
    operator.truediv,
    operator.mod,
    operator.pow,
    operator.neg,
)

#: Runtime ops that compute each output element from the same element of their inputs (and
#: no per-channel parameter), so they give the same numbers on a channels-last view.
LAYOUT_FREE_OPS = frozenset(
    {"relu", "clamp", "leaky_relu", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "add"}
)

SHUFFLE_HELP = (
    "A rank-5 view is packed only as ShuffleNet's channel shuffle, x.view(n, g, c // g, h, w) "
    "-> torch.transpose(x, 1, 2) (or x.transpose(1, 2), x.permute(0, 2, 1, 3, 4)) -> "
    ".contiguous() -> x.view(n, -1, h, w) (or reshape / flatten(1, 2)), which becomes one "
    "channel_shuffle op; nn.ChannelShuffle(g) and F.channel_shuffle(x, g) work too."
)
CHANNELS_LAST_HELP = (
    "Between x.permute(0, 2, 3, 1) and x.permute(0, 3, 1, 2) the runtime packs nn.LayerNorm(C) "
    "and F.layer_norm, nn.Linear (a 1x1 conv), elementwise ops (activations, adds of two "
    "channels-last tensors) and products or sums with a per-channel constant (a layer scale "
    "gamma * y); end the region with x.permute(0, 3, 1, 2) before anything else."
)


@dataclass(frozen=True)
class ChannelsLast:
    """The FX node is ``value.permute(0, 2, 3, 1)`` of the runtime value ``name``."""

    name: str


@dataclass(frozen=True)
class ChannelGroups:
    """The FX node is ``value.view(n, groups, c // groups, h, w)``; ``swapped`` once the
    group axes were transposed (``[n, c // groups, groups, h, w]``)."""

    name: str
    groups: int
    swapped: bool = False


#: The states of FX nodes that are not one runtime value as they stand (the channel split's
#: tuple of ``passes/export/split.py`` too).
LAYOUTS = (ChannelsLast, ChannelGroups, ChannelPieces)


class PatternLowering:
    """The Lowerer's handlers of the patterns in the module docstring (a mixin: it uses the
    Lowerer's ``env``, ``emit``, ``value``, ``fail`` ...)."""

    env: dict[fx.Node, Any]
    modules: dict[str, nn.Module]

    # ---------------------------------------------------------------- entry points
    def lower_structure(self, node: fx.Node) -> bool:
        """Lower ``node`` if it is shape arithmetic or part of a layout pattern; False when it
        is an ordinary node for the spellings table."""
        if (node.op, node.target) in (("call_method", "size"), ("call_function", getattr)):
            return False  # sizes come from shape propagation, whatever the layout
        states = [self.env.get(a) for a in node.all_input_nodes]
        tensors = [s for s in states if isinstance(s, (str, *LAYOUTS))]
        if node.op == "call_function" and node.target in PYTHON_ARITHMETIC and not tensors:
            args = [self.env[a] if isinstance(a, fx.Node) else a for a in node.args]
            self.env[node] = node.target(*args)
            return True
        if any(isinstance(s, ChannelGroups) for s in tensors):
            self._lower_in_groups(node, tensors)
            return True
        if any(isinstance(s, ChannelsLast) for s in tensors):
            self._lower_channels_last(node, tensors)
            return True
        if node.op == "call_method" and node.target in ("view", "reshape") and _rank(node) == 5:
            self._start_groups(node)
            return True
        return False

    def layout_error(self, node: fx.Node, state: Any) -> Exception:
        """The error for a value inside a pattern that reaches a node outside it."""
        if isinstance(state, ChannelGroups):
            return self.fail(node, "it reads the rank-5 view of a channel shuffle", SHUFFLE_HELP)
        if isinstance(state, ChannelPieces):
            return self.fail(node, "it reads the tuple of pieces of a channel split", SPLIT_HELP)
        return self.fail(node, "it reads a channels-last (permuted) tensor", CHANNELS_LAST_HELP)

    # ---------------------------------------------------------------- spellings handlers
    def lower_permute(self, node: fx.Node, target: Any) -> None:
        """``permute`` of an ordinary NCHW value: (0, 2, 3, 1) starts a channels-last region."""
        x = self.value(node, node.args[0])
        if len(self.shape(x)) == 3 and self.permutation(node, 4) == (0, 2, 3, 1):
            self.env[node] = ChannelsLast(x)
            return
        raise self.fail(node, f"permute to {self.permutation(node, _rank(node))}", _PERMUTE_HELP)

    def lower_transpose(self, node: fx.Node, target: Any) -> None:
        """``transpose`` of an ordinary value: only the channel shuffle's (handled in
        ``_lower_in_groups``) is packed."""
        raise self.fail(node, "a transpose outside the channel-shuffle pattern", SHUFFLE_HELP)

    def lower_channel_shuffle_module(self, node: fx.Node, mod: nn.ChannelShuffle) -> None:
        self._channel_shuffle(node, self.value(node, node.args[0]), int(mod.groups))

    def lower_channel_shuffle_function(self, node: fx.Node, target: Any) -> None:
        groups = node.args[1] if len(node.args) > 1 else node.kwargs.get("groups")
        groups = self.env[groups] if isinstance(groups, fx.Node) else groups
        self._channel_shuffle(node, self.value(node, node.args[0]), int(groups))

    def lower_layernorm(self, node: fx.Node, mod: nn.LayerNorm) -> None:
        """``nn.LayerNorm(F)`` on an [N, F] value (a channels-last one is handled in
        ``_lower_channels_last``)."""
        x = self.value(node, node.args[0])
        if len(self.shape(x)) != 1:
            raise self.fail(
                node,
                f"LayerNorm{tuple(mod.normalized_shape)} over the last dims of an NCHW tensor",
                "The runtime normalizes over channels: x.permute(0, 2, 3, 1) -> nn.LayerNorm(C) "
                "-> x.permute(0, 3, 1, 2), or LayerNorm(F) on an [N, F] tensor.",
            )
        self.bind(node, self._layernorm_module(node, mod, x))

    # ---------------------------------------------------------------- helpers
    def permutation(self, node: fx.Node, rank: int) -> tuple[int, ...] | None:
        """The dims order a permute / transpose node produces (each dim mod ``rank``), or
        None when the node is neither."""
        if node.op == "call_method":
            name = str(node.target)
        elif node.op == "call_function" and node.target in (torch.permute, torch.transpose):
            name = node.target.__name__
        else:
            return None
        args = [self.env[a] if isinstance(a, fx.Node) else a for a in node.args[1:]]
        if name == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], list | tuple) else args
            dims = node.kwargs.get("dims", dims)
            return tuple(int(d) % rank for d in dims)
        if name == "transpose":
            first, second = (*args, node.kwargs.get("dim0"), node.kwargs.get("dim1"))[:2]
            order = list(range(rank))
            first, second = int(first) % rank, int(second) % rank
            order[first], order[second] = order[second], order[first]
            return tuple(order)
        return None

    def _channel_shuffle(self, node: fx.Node, x: str, groups: int) -> None:
        channels = self.shape(x)[0]
        if len(self.shape(x)) != 3 or groups < 1 or channels % groups:
            raise self.fail(
                node, f"channel shuffle of {list(self.shape(x))} in {groups} groups", SHUFFLE_HELP
            )
        self.bind(
            node,
            self.emit("channel_shuffle", node.name, [x], self.shape(x), attrs={"groups": groups}),
        )

    def _start_groups(self, node: fx.Node) -> None:
        x = self.value(node, node.args[0])
        shape, out = self.shape(x), self.shape_of(node)
        if len(shape) != 3 or out[0] * out[1] != shape[0] or out[2:] != shape[1:]:
            raise self.fail(node, f"a view of {list(shape)} as {list(out)}", SHUFFLE_HELP)
        self.env[node] = ChannelGroups(x, out[0])

    def _lower_in_groups(self, node: fx.Node, tensors: list[Any]) -> None:
        state = tensors[0]
        if len(tensors) != 1:
            raise self.layout_error(node, state)
        if node.op == "call_method" and node.target == "contiguous":
            self.env[node] = state
            return
        if self.permutation(node, 5) == (0, 2, 1, 3, 4) and not state.swapped:
            self.env[node] = replace(state, swapped=True)
            return
        reshape = node.op == "call_method" and node.target in ("view", "reshape", "flatten")
        if (reshape or node.target is torch.flatten) and self.shape_of(node) == self.shape(
            state.name
        ):
            if state.swapped:
                self._channel_shuffle(node, state.name, state.groups)
            else:  # viewed back without the transpose: nothing moved
                self.bind(node, state.name)
            return
        raise self.layout_error(node, state)

    def _lower_channels_last(self, node: fx.Node, tensors: list[Any]) -> None:
        state = next(s for s in tensors if isinstance(s, ChannelsLast))
        if node.op == "call_method" and node.target == "contiguous":
            self.env[node] = state
            return
        order = self.permutation(node, 4)
        if order is not None:
            if order != (0, 3, 1, 2):
                raise self.fail(node, f"permute {order} of a channels-last tensor", _PERMUTE_HELP)
            self.bind(node, state.name)
            return
        mod = self.modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, nn.LayerNorm):
            self.env[node] = ChannelsLast(self._layernorm_module(node, mod, state.name))
            return
        if node.op == "call_function" and node.target is F.layer_norm:
            self.env[node] = ChannelsLast(self.layer_norm_call(node, state.name))
            return
        if isinstance(mod, nn.Linear):
            self.env[node] = ChannelsLast(self._pointwise(node, mod, state.name))
            return
        if not all(isinstance(s, ChannelsLast) for s in tensors):
            raise self.fail(
                node, "it mixes a channels-last tensor with an NCHW one", CHANNELS_LAST_HELP
            )
        self._elementwise_channels_last(node)

    def _elementwise_channels_last(self, node: fx.Node) -> None:
        """Run the node's own handler on the NCHW values; keep it only if what it emitted is
        elementwise (then the numbers are the same in either layout)."""
        rule = self.rule_of(node)
        if rule is None:
            raise self.fail(node, "it has no runtime op", CHANNELS_LAST_HELP)
        saved = {
            a: self.env[a] for a in node.all_input_nodes if isinstance(self.env[a], ChannelsLast)
        }
        before = len(self.nodes)
        self.channels_last_nodes.add(node)
        try:
            self.env.update({a: state.name for a, state in saved.items()})
            getattr(self, f"lower_{rule.handler}")(node, self.target_of(node))
        finally:
            self.env.update(saved)
            self.channels_last_nodes.discard(node)
        emitted = self.nodes[before:]
        moved = [n.op for n in emitted if not self._layout_free(n)]
        if moved:
            raise self.fail(
                node, f"it lowers to {moved}, which depends on the layout", CHANNELS_LAST_HELP
            )
        self.env[node] = ChannelsLast(self.env[node])

    def _layout_free(self, node: Any) -> bool:
        if node.op in LAYOUT_FREE_OPS:
            return True
        if node.op == "prelu":  # one shared slope
            return node.params["weight"].size == 1
        if node.op == "mul":  # elementwise unless one factor is a per-channel gate
            return self.shape(node.inputs[0]) == self.shape(node.inputs[1])
        if node.op == "affine":  # one scale and one bias for all channels (y * 0.5)
            scale, bias = node.params["scale"], node.params["bias"]
            return bool((scale == scale[0]).all() and (bias == bias[0]).all())
        return False

    def _layernorm_module(self, node: fx.Node, mod: nn.LayerNorm, x: str) -> str:
        weight = _np32(mod.weight) if mod.weight is not None else None
        bias = _np32(mod.bias) if mod.bias is not None else None
        return self._layernorm(node, x, tuple(mod.normalized_shape), weight, bias, float(mod.eps))

    def _layernorm(
        self,
        node: fx.Node,
        x: str,
        normalized_shape: tuple[int, ...],
        weight: np.ndarray | None,
        bias: np.ndarray | None,
        eps: float,
    ) -> str:
        """``layernorm_channels`` over the channels of ``x`` (weight / bias None: 1 / 0)."""
        channels = self.shape(x)[0]
        if tuple(normalized_shape) != (channels,):
            raise self.fail(
                node,
                f"LayerNorm{tuple(normalized_shape)} on {channels} channels",
                "Normalize over the channels only: nn.LayerNorm(C) or F.layer_norm(x, (C,)).",
            )
        return self.emit(
            "layernorm_channels",
            node.name,
            [x],
            self.shape(x),
            attrs={"channels": channels, "eps": eps},
            params={
                "weight": np.ones(channels, np.float32) if weight is None else weight,
                "bias": np.zeros(channels, np.float32) if bias is None else bias,
            },
        )

    def _pointwise(self, node: fx.Node, mod: nn.Linear, x: str) -> str:
        """A Linear on each pixel's channels = a 1x1 convolution of the NCHW value."""
        channels, height, width = self.shape(x)
        out = (mod.out_features, height, width)
        geometry = {"in_channels": channels, "out_channels": mod.out_features, "kernel": [1, 1]}
        if not isinstance(mod, BinaryLinear):
            params = {"weight": _np32(mod.weight)[:, :, None, None]}
            if mod.bias is not None:
                params["bias"] = _np32(mod.bias)
            return self.emit("conv2d", node.name, [x], out, attrs=geometry, params=params)
        if not isinstance(mod.input_binarizer, SignSTE | ApproxSign | ProgressiveSign):
            raise self.fail(
                node,
                f"a binary Linear on a channels-last tensor with "
                f"{type(mod.input_binarizer).__name__}",
                "Its per-channel binarizer reads channels on dim 1; use a sign binarizer "
                "(recipe xnor or bireal) or keep this layer float (keep_float=[...]).",
            )
        from passes.export.lower import pack_sign_bits  # lower imports this module

        bits = self.lower_binarizer(node, mod.input_binarizer, x, f"{node.name}.bits")
        packed = pack_sign_bits(mod.weight.detach().double().numpy())  # [O, words]
        acc = self.emit(
            "bconv2d",
            f"{node.name}.acc",
            [bits],
            out,
            attrs={**geometry, "pad_value": 0},
            params={"weight": packed[:, None, None, :]},
        )
        scale = mod.weight_scale_values().detach().reshape(-1).double().numpy()
        bias = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros_like(scale)
        return self.emit(
            "affine",
            node.name,
            [acc],
            out,
            attrs={"channels": mod.out_features},
            params={"scale": scale, "bias": bias},
        )


_PERMUTE_HELP = (
    "The runtime packs x.permute(0, 2, 3, 1) -> LayerNorm / Linear / elementwise ops -> "
    "x.permute(0, 3, 1, 2) (ConvNeXt) and permute(0, 2, 1, 3, 4) inside the channel shuffle. "
    + SHUFFLE_HELP
)


def _rank(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else -1


def _np32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


__all__ = ["LAYOUTS", "PatternLowering"]
