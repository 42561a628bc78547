"""The runtime's op list (IR) as the packer builds it, before it is written to the file.

The op vocabulary and its semantics are specified in ``docs/IR.md``; this module only holds
the in-memory form: a list of :class:`IRNode` whose parameters are numpy arrays, and the
conversion to the (graph JSON, named tensors) pair that ``runtime.format`` writes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_NAME = "binarize.packed"
FORMAT_VERSION = 1


@dataclass
class IRNode:
    """One op of the runtime graph: ``outputs = op(inputs; attrs, params)``."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Program:
    """A whole lowered network: input specs, output specs and nodes in execution order.

    ``value_shapes`` maps every value name to its NCHW (or [N, F]) shape with the batch
    dimension as ``None``; ``value_kinds`` to ``"float"`` or ``"bits"``.
    """

    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    nodes: list[IRNode]
    value_shapes: dict[str, list[int | None]] = field(default_factory=dict)
    value_kinds: dict[str, str] = field(default_factory=dict)

    def producers(self) -> dict[str, IRNode]:
        """Value name -> the node that writes it."""
        return {out: node for node in self.nodes for out in node.outputs}

    def use_counts(self) -> Counter[str]:
        """Value name -> how many node inputs and graph outputs read it."""
        counts: Counter[str] = Counter()
        for node in self.nodes:
            counts.update(node.inputs)
        counts.update(spec["name"] for spec in self.outputs)
        return counts

    def to_file_parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The graph JSON (``docs/IR.md``) and the tensors it names, keyed ``node.role``."""
        tensors: dict[str, np.ndarray] = {}
        nodes = []
        for node in self.nodes:
            keys = {}
            for role, array in node.params.items():
                key = f"{node.name}.{role}"
                if array.dtype == np.float64:  # folding runs in float64; the file holds float32
                    array = array.astype(np.float32)
                tensors[key] = np.ascontiguousarray(array)
                keys[role] = key
            nodes.append(
                {
                    "op": node.op,
                    "name": node.name,
                    "inputs": list(node.inputs),
                    "outputs": list(node.outputs),
                    "attrs": node.attrs,
                    "params": keys,
                }
            )
        graph = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "nodes": nodes,
        }
        return graph, tensors
