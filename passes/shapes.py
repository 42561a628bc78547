"""Shape propagation: record every node's output shape in ``node.meta["tensor_meta"]``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from operators.errors import ConversionError
from passes.base import PassResult


def input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as the tuple of forward arguments: a tensor becomes a 1-tuple, a
    list a tuple."""
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Run ``gm`` once on ``example_inputs`` (eval mode, no grad) and record node shapes.

    Eval mode keeps BatchNorm running statistics untouched; the module's training flag is
    restored afterwards.

    Raises:
        ConversionError: the forward failed; the message names the node that failed.
    """
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            # A plain run first: ShapeProp prints a traceback to stderr when a node fails,
            # this run instead reports the failing node in the library's error.
            checker = _NodeTracking(gm)
            try:
                checker.run(*example_inputs)
            except Exception as error:
                node = checker.current.format_node() if checker.current else "(inputs)"
                cause = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ConversionError(
                    f"the traced model does not run on example_inputs: {cause}\n  at node {node}"
                    "\nWhat to do: pass example_inputs that the model's forward accepts (a tuple "
                    "of tensors with a batch dimension)."
                ) from error
            ShapeProp(gm).propagate(*example_inputs)
    finally:
        gm.train(was_training)


class _NodeTracking(fx.Interpreter):
    """An interpreter that remembers the node it is running (to name it when it fails)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


@dataclass
class RecordShapes:
    """Pass: record node shapes for ``example_inputs`` (see :func:`propagate_shapes`)."""

    example_inputs: tuple[Any, ...]
    name: str = "record_shapes"

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        propagate_shapes(gm, self.example_inputs)
        return PassResult(gm, modified=False)
