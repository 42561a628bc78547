"""Symbolic tracing of a float model into a ``torch.fx.GraphModule``.

Tracing runs in eval mode (so ``if self.training`` branches and dropout take their inference
path; a recorded call that is the identity on that path, torchvision's
``stochastic_depth(x, p, mode, training=False)``, is removed from the graph) and keeps as
single opaque calls ("leaves"): every ``torch.nn`` module (BatchNorm, conv, linear,
activations...), every module of ``operators``, and whatever the user adds by type or
by qualified name. A failure is re-raised as :class:`binarize.ConversionError` naming the module
being traced, the user-code line that broke, and the escape hatches.
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import fx, nn

from operators.errors import ConversionError

LeafSpec = type | str

_TORCH_DIR = os.path.dirname(torch.__file__)


class BinarizeTracer(fx.Tracer):
    """An ``fx.Tracer`` whose leaves are torch.nn modules, ``operators`` modules, user leaves.

    Args:
        leaf_modules: extra leaves, each a module type (every instance is a leaf) or a
            qualified module name such as ``"backbone.block3"`` (that instance only).
    """

    def __init__(self, leaf_modules: Iterable[LeafSpec] = ()) -> None:
        super().__init__()
        # every node keeps the user's source line, so a later error can point at it
        self.record_stack_traces = True
        leaves = list(leaf_modules)
        self.leaf_types = tuple(leaf for leaf in leaves if isinstance(leaf, type))
        self.leaf_names = frozenset(leaf for leaf in leaves if isinstance(leaf, str))
        unknown = [leaf for leaf in leaves if not isinstance(leaf, (type, str))]
        if unknown:
            raise ConversionError(
                f"leaf_modules entries must be module types or qualified names, got {unknown!r}."
            )

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_types):
            return True
        if type(m).__module__.partition(".")[0] == "operators":
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(
    model: nn.Module,
    *,
    leaf_modules: Iterable[LeafSpec] = (),
    concrete_args: Mapping[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` (in eval mode) into a GraphModule with the same training flag as ``model``.

    The model is put in eval mode only while tracing and restored after; it is not otherwise
    touched (callers that rewrite the result should trace a deep copy). ``concrete_args``
    fixes non-tensor forward arguments (``fx.Tracer.trace``); the traced module still accepts
    them, with the fixed value as default.

    Raises:
        ConversionError: tracing failed (data-dependent control flow, a Python call on a traced
            value, ...). The message names the module, the line, and how to work around it.
    """
    tracer = BinarizeTracer(leaf_modules)
    was_training = model.training
    model.eval()
    try:
        graph = tracer.trace(model, concrete_args=dict(concrete_args) if concrete_args else None)
    except ConversionError:
        raise
    except Exception as error:
        raise _tracing_error(model, tracer, error) from error
    finally:
        model.train(was_training)
    _drop_inference_identities(graph)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    if concrete_args:
        _default_to_concrete(model, gm, concrete_args)
    gm.train(was_training)
    return gm


def _is_stochastic_depth(target: Any) -> bool:
    """torchvision's ``ops.stochastic_depth``, recorded as one call (it is ``torch.fx.wrap``-ed);
    matched by name so that the project never imports torchvision."""
    return getattr(target, "__name__", "") == "stochastic_depth" and str(
        getattr(target, "__module__", "")
    ).startswith("torchvision.")


def _drop_inference_identities(graph: fx.Graph) -> None:
    """Remove calls that tracing recorded although they are the identity on the inference path.

    ``stochastic_depth(x, p, mode, training)`` (EfficientNet, ConvNeXt, RegNet's torchvision
    blocks) returns ``x`` unchanged when ``training`` is False or ``p == 0``; tracing in eval mode
    recorded ``training=False``, so the node can never drop a residual branch and its readers
    read ``x`` directly.
    """
    for node in list(graph.nodes):
        if node.op != "call_function" or not _is_stochastic_depth(node.target):
            continue
        names = ("input", "p", "mode", "training")
        bound = {**dict(zip(names, node.args)), **node.kwargs}
        if bound.get("training", True) is False or bound.get("p") == 0:
            node.replace_all_uses_with(bound["input"])
            graph.erase_node(node)


def _default_to_concrete(
    model: nn.Module, gm: fx.GraphModule, concrete_args: Mapping[str, Any]
) -> None:
    """Make each concrete argument's value the default of its placeholder.

    FX keeps a placeholder per concrete argument and asserts, at run time, that the caller
    passes the traced value; with that value as default, ``gm(x)`` works without repeating it.
    """
    parameters = list(inspect.signature(model.forward).parameters)
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    for name, node in zip(parameters, placeholders):
        if name in concrete_args:
            node.args = (concrete_args[name],)
    gm.recompile()


def _tracing_error(model: nn.Module, tracer: BinarizeTracer, error: Exception) -> ConversionError:
    """Build the message for a tracing failure from the tracer's module stack and traceback."""
    if tracer.module_stack:
        path, module_type = list(tracer.module_stack.values())[-1]
        type_name = getattr(module_type, "__name__", str(module_type))
        where = f"module {path!r} ({type_name})" if path else f"the root {type_name}"
    else:
        path, where = "", f"the root {type(model).__name__}"
    frame = _user_frame(error)
    line = f"\n  at {frame.filename}:{frame.lineno}: {frame.line}" if frame else ""
    leaf_hint = (
        f"keep the module as one opaque call with leaf_modules=[{path!r}]"
        if path
        else "move that code into a submodule and list it in leaf_modules=[...]"
    )
    return ConversionError(
        f"cannot trace {type(model).__name__}: {type(error).__name__} in {where}: {error}{line}\n"
        "What to do: rewrite the failing line without Python control flow on tensor values "
        "(e.g. torch.where), or fix Python-level inputs with concrete_args={...}, or "
        f"{leaf_hint} (a leaf is not rewritten inside, so its layers stay float)."
    )


def _user_frame(error: Exception) -> traceback.FrameSummary | None:
    """The innermost traceback frame outside torch itself: the user's line that broke tracing."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(_TORCH_DIR) and frame.filename != __file__
    ]
    return frames[-1] if frames else None
