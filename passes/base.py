"""Pass infrastructure shared by every graph pass.

A pass is any callable ``GraphModule -> PassResult`` with a ``name`` (the protocol below, in
the spirit of ``torch.fx.passes.infra.pass_base``); a pipeline is a plain list of passes run in
order by :func:`run_passes`, which checks and tidies the module after each one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import fx, nn

from operators.errors import ConversionError
from passes import spellings


@dataclass
class PassResult:
    """What a pass hands back: the (possibly new) module and whether it changed anything."""

    graph_module: fx.GraphModule
    modified: bool


@runtime_checkable
class GraphPass(Protocol):
    """One small graph transform. ``name`` is used in error messages and in recipes."""

    name: str

    def __call__(self, gm: fx.GraphModule) -> PassResult: ...


def cleanup(gm: fx.GraphModule) -> fx.GraphModule:
    """Check the graph, regenerate ``forward`` and drop submodules no node uses any more."""
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def run_passes(gm: fx.GraphModule, passes: Iterable[GraphPass]) -> fx.GraphModule:
    """Run ``passes`` in order on ``gm``; after every pass lint, recompile and clean up.

    A pass that leaves a malformed graph is reported by name, so a broken pipeline points at
    the step that broke it rather than at the next forward call.
    """
    for graph_pass in passes:
        gm = graph_pass(gm).graph_module
        try:
            cleanup(gm)
        except RuntimeError as error:
            raise ConversionError(
                f"pass {graph_pass.name!r} left an invalid graph: {error}. This is a bug in the "
                "pass; please report it with the model that triggers it."
            ) from error
    return gm


# ---- node and module helpers shared by the passes -------------------------------------------

#: Functions and methods that add two tensors elementwise (residual connections).
ADD_TARGETS: tuple[Any, ...] = spellings.ADD_FUNCTIONS
ADD_METHODS: tuple[str, ...] = spellings.ADD_METHODS


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The submodule a ``call_module`` node calls, or None for any other node."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def module_nodes(gm: fx.GraphModule, types: type | tuple[type, ...]) -> Iterator[fx.Node]:
    """The ``call_module`` nodes whose module is exactly one of ``types`` (no subclasses)."""
    wanted = types if isinstance(types, tuple) else (types,)
    for node in list(gm.graph.nodes):
        module = module_of(gm, node)
        if module is not None and type(module) in wanted:
            yield node


def is_add(node: fx.Node) -> bool:
    """Whether ``node`` adds two values (``a + b``, ``torch.add``, ``a.add(b)``)."""
    return (node.op == "call_function" and node.target in ADD_TARGETS) or (
        node.op == "call_method" and node.target in ADD_METHODS
    )


def tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The output shape recorded by shape propagation, or None when it is not a tensor."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def unique_target(gm: fx.GraphModule, base: str) -> str:
    """``base`` if no attribute of ``gm`` has that dotted path, else ``base_1``, ``base_2``..."""
    candidate, index = base, 0
    while _has_path(gm, candidate):
        index += 1
        candidate = f"{base}_{index}"
    return candidate


def _has_path(gm: nn.Module, dotted: str) -> bool:
    owner: Any = gm
    for part in dotted.split("."):
        if not hasattr(owner, part):
            return False
        owner = getattr(owner, part)
    return True


def owner_path(node: fx.Node) -> str:
    """Dotted path of the module whose ``forward`` created ``node`` ("" for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return str(path)


def add_module_node(
    gm: fx.GraphModule,
    base: str,
    module: nn.Module,
    args: Sequence[Any],
    *,
    after: fx.Node,
) -> fx.Node:
    """Register ``module`` under a fresh name derived from ``base`` and call it after ``after``.

    The new node copies ``after``'s metadata (shape, module stack), which is right for the
    shape-preserving modules the passes insert (activations, pooled shortcuts set their own).
    """
    target = unique_target(gm, base)
    gm.add_submodule(target, module)
    with gm.graph.inserting_after(after):
        node = gm.graph.call_module(target, tuple(args))
    node.meta = dict(after.meta)
    return node


def replace_uses_after(old: fx.Node, new: fx.Node, start: fx.Node) -> None:
    """Point every user of ``old`` that comes after ``start`` in the graph at ``new`` instead."""
    order = {node: index for index, node in enumerate(start.graph.nodes)}
    for user in list(old.users):
        if user is not new and order[user] > order[start]:
            user.replace_input_with(old, new)


def walk(
    start: fx.Node,
    step: Callable[[fx.Node], Iterable[fx.Node]],
    stop: Callable[[fx.Node], bool],
) -> list[fx.Node]:
    """Breadth-first search from ``start`` along ``step``; return the nodes where ``stop`` holds.

    The search does not continue past a stopping node, so it finds the nearest nodes of a kind
    (e.g. the weight layers that feed an activation with no other weight layer in between).
    """
    found: list[fx.Node] = []
    seen = {start}
    frontier = deque(step(start))
    while frontier:
        node = frontier.popleft()
        if node in seen:
            continue
        seen.add(node)
        if stop(node):
            found.append(node)
        else:
            frontier.extend(step(node))
    return found


def producers(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` reads."""
    return list(node.all_input_nodes)


def consumers(node: fx.Node) -> list[fx.Node]:
    """The nodes that read ``node``."""
    return list(node.users)
