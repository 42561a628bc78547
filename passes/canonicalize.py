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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from passes import spellings
from passes.base import (
    PassResult,
    add_module_node,
    module_of,
    owner_path,
    replace_uses_after,
    unique_target,
)
from passes.shapes import RecordShapes
from passes.spellings import ACTIVATION_TYPES, ActivationForm, clamp_module

__all__ = ["ACTIVATION_TYPES", "ActivationsToModules", "Canonicalize", "OutOfPlace", "clamp_module"]

_FUNCTIONS = spellings.ACTIVATION_FUNCTIONS
_METHODS = spellings.ACTIVATION_METHODS
_INPLACE_OPERATORS = spellings.INPLACE_FUNCTIONS
_INPLACE_METHODS = spellings.INPLACE_METHODS


def _bind(form: ActivationForm, node: fx.Node) -> dict[str, Any] | None:
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
