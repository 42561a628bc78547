"""Canonicalization: one spelling per activation, no in-place ops, one module per call site.

Runs first (after tracing), as an ordered chain of small steps:

1. :class:`OutOfPlace` turns in-place arithmetic (``out += identity``, ``x.add_(y)``) into its
   out-of-place form, so later passes can add readers of any value safely.
2. :class:`ActivationsToModules` turns every ReLU-family spelling (``F.relu``, ``torch.relu``,
   ``x.relu()``, ``relu_``, ``F.relu6``, ``F.hardtanh``, ``F.leaky_relu``, ``torch.clamp`` /
   ``x.clamp`` with constant bounds, and the modules ``nn.ReLU``, ``nn.ReLU6``,
   ``nn.LeakyReLU``, ``nn.Hardtanh``) into a call of a fresh module with ``inplace=False``,
   one per call site (torchvision's BasicBlock calls one ``self.relu`` twice: the two sites get
   ``relu`` and ``relu_1``, so a per-site PReLU later gets its own parameters).
3. :class:`~passes.shapes.RecordShapes` records every node's shape for the later passes.

In-place semantics are kept exactly: after ``y = x.relu_()`` the name ``x`` holds the new
value, so every later reader of ``x`` is pointed at the new node.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from passes.base import (
    PassResult,
    add_module_node,
    module_of,
    owner_path,
    replace_uses_after,
    unique_target,
)
from passes.shapes import RecordShapes

#: Activation module types that canonical graphs use (matched by exact type).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)

_INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}
_INPLACE_METHODS = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div"}


def clamp_module(low: float | None, high: float | None) -> nn.Module | None:
    """The activation module equal to ``clamp(x, low, high)``, or None when there is none.

    ``clamp(x, 0)`` is ReLU, ``clamp(x, 0, 6)`` is ReLU6, any other two constant bounds are
    Hardtanh(low, high); a one-sided clamp at a non-zero bound stays as it is.
    """
    if low == 0 and high is None:
        return nn.ReLU()
    if low == 0 and high == 6:
        return nn.ReLU6()
    if low is not None and high is not None:
        return nn.Hardtanh(float(low), float(high))
    return None


@dataclass(frozen=True)
class _Form:
    """How to read one activation spelling: its parameters (after the input) and defaults."""

    params: tuple[tuple[str, Any], ...]
    make: Callable[..., nn.Module | None]
    always_inplace: bool = False


_RELU = _Form((("inplace", False),), lambda inplace: nn.ReLU())
_RELU_PLAIN = _Form((), lambda: nn.ReLU())
_RELU_ = _Form((), lambda: nn.ReLU(), always_inplace=True)
_RELU6 = _Form((("inplace", False),), lambda inplace: nn.ReLU6())
_HARDTANH = _Form(
    (("min_val", -1.0), ("max_val", 1.0), ("inplace", False)),
    lambda min_val, max_val, inplace: clamp_module(min_val, max_val),
)
_HARDTANH_ = _Form(
    (("min_val", -1.0), ("max_val", 1.0)),
    lambda min_val, max_val: clamp_module(min_val, max_val),
    always_inplace=True,
)
_LEAKY = _Form(
    (("negative_slope", 0.01), ("inplace", False)),
    lambda negative_slope, inplace: nn.LeakyReLU(float(negative_slope)),
)
_LEAKY_ = _Form(
    (("negative_slope", 0.01),),
    lambda negative_slope: nn.LeakyReLU(float(negative_slope)),
    always_inplace=True,
)
_CLAMP = _Form((("min", None), ("max", None)), lambda min, max: clamp_module(min, max))
_CLAMP_ = _Form(
    (("min", None), ("max", None)), lambda min, max: clamp_module(min, max), always_inplace=True
)

_FUNCTIONS: dict[Any, _Form] = {
    F.relu: _RELU,
    torch.relu: _RELU_PLAIN,
    torch.relu_: _RELU_,
    F.relu_: _RELU_,
    F.relu6: _RELU6,
    F.hardtanh: _HARDTANH,
    F.hardtanh_: _HARDTANH_,
    F.leaky_relu: _LEAKY,
    F.leaky_relu_: _LEAKY_,
    torch.clamp: _CLAMP,
    torch.clip: _CLAMP,
    torch.clamp_: _CLAMP_,
    torch.clip_: _CLAMP_,
}
_METHODS: dict[str, _Form] = {
    "relu": _RELU_PLAIN,
    "relu_": _RELU_,
    "clamp": _CLAMP,
    "clip": _CLAMP,
    "clamp_": _CLAMP_,
    "clip_": _CLAMP_,
}


def _bind(form: _Form, node: fx.Node) -> dict[str, Any] | None:
    """The form's parameters read from the node's args/kwargs; None if one is a graph value."""
    values = dict(form.params)
    for (name, _), value in zip(form.params, node.args[1:]):
        values[name] = value
    for name, value in node.kwargs.items():
        if name not in values:
            return None
        values[name] = value
    if any(isinstance(value, fx.Node) for value in values.values()):
        return None
    return values


@dataclass
class OutOfPlace:
    """Pass: ``a += b`` / ``a.add_(b)`` (and sub, mul, div) -> out-of-place ops.

    Later readers of ``a`` are pointed at the result, which is exactly what the in-place op
    meant, and no node mutates a value another node may read.
    """

    name: str = "out_of_place"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target in _INPLACE_OPERATORS:
                node.target = _INPLACE_OPERATORS[node.target]
            elif node.op == "call_method" and node.target in _INPLACE_METHODS:
                node.target = _INPLACE_METHODS[node.target]
            else:
                continue
            replace_uses_after(node.args[0], node, node)
            modified = True
        return PassResult(gm, modified)


@dataclass
class ActivationsToModules:
    """Pass: every ReLU-family spelling -> a fresh ``inplace=False`` module per call site."""

    name: str = "activations_to_modules"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        seen_targets: set[str] = set()
        for node in list(gm.graph.nodes):
            rewritten = self._rewrite(gm, node, seen_targets)
            modified = modified or rewritten
        return PassResult(gm, modified)

    def _rewrite(self, gm: fx.GraphModule, node: fx.Node, seen_targets: set[str]) -> bool:
        module = module_of(gm, node)
        if module is not None:
            if type(module) not in ACTIVATION_TYPES:
                return False
            return self._unshare(gm, node, module, seen_targets)
        form = None
        if node.op == "call_function":
            form = _FUNCTIONS.get(node.target)
        elif node.op == "call_method":
            form = _METHODS.get(str(node.target))
        if form is None:
            return False
        values = _bind(form, node)
        if values is None:
            return False
        inplace = form.always_inplace or bool(values.get("inplace", False))
        activation = form.make(**values)
        if activation is None:
            return False
        source = node.args[0]
        base = ".".join(part for part in (owner_path(node), node.name) if part)
        new = add_module_node(gm, base, activation, (source,), after=node)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        if inplace:
            replace_uses_after(source, new, new)
        return True

    def _unshare(
        self, gm: fx.GraphModule, node: fx.Node, module: nn.Module, seen_targets: set[str]
    ) -> bool:
        """Give this call site its own ``inplace=False`` copy of the module."""
        target = str(node.target)
        fresh = copy.deepcopy(module)
        inplace = bool(getattr(fresh, "inplace", False))
        if hasattr(fresh, "inplace"):
            fresh.inplace = False
        if target in seen_targets:
            target = unique_target(gm, target)
        seen_targets.add(target)
        gm.add_submodule(target, fresh)
        node.target = target
        if inplace:
            replace_uses_after(node.args[0], node, node)
        return True


@dataclass
class Canonicalize:
    """Pass: :class:`OutOfPlace`, :class:`ActivationsToModules`, then record shapes."""

    example_inputs: tuple[Any, ...]
    name: str = "canonicalize"

    def steps(self) -> Sequence[Any]:
        return (OutOfPlace(), ActivationsToModules(), RecordShapes(self.example_inputs))

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for step in self.steps():
            result = step(gm)
            gm, modified = result.graph_module, modified or result.modified
            gm.recompile()
        return PassResult(gm, modified)
