"""The IR data model, once for the writer (``binarize.pack``) and the reader (``runtime.load``).

A packed model is a :class:`Graph`: input and output :class:`TensorSpec`\\ s and a list of
:class:`Node`\\ s in execution order, each ``outputs = op(inputs; attrs, params)`` with its op
declared in ``runtime.registry``. Every value has a :class:`ValueInfo`: its kind (``"float"``:
float32; ``"bits"``: channels packed into uint64 words) and its shape without the batch
dimension, in the NCHW terms of the PyTorch graph: ``(C, H, W)`` for rank-4 values, ``(F,)``
for rank-2 ones. The runtime's NHWC layout is the executor's business (``runtime.graph``).

A node's ``params`` map a role (``"weight"``, ``"threshold"``...) to a numpy array on the
writer's side; in a graph read from a file they map the role to the tensor's key, and the
arrays come with it by key (``runtime.format.PackedModel``). ``Graph.to_file_parts`` turns the
writer's form into the file's graph JSON and its named tensors (``docs/IR.md``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "binarize.packed"
VERSION = 1
# No single value may hold more elements per sample than this: a guard against absurd attrs
# (a 10^6 upsampling factor) before any buffer is allocated. ~1 GiB of float32 per sample.
MAX_VALUE_ELEMENTS = 1 << 28
PARAM_DTYPES = {"float32": np.float32, "uint64": np.uint64, "int8": np.int8, "uint8": np.uint8}


@dataclass(frozen=True)
class ValueInfo:
    """A value of the graph: ``kind`` is "float" (float32) or "bits" (uint64, channels packed
    along the last axis); ``shape`` excludes the batch dimension, in NCHW terms."""

    kind: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def rank(self) -> int:
        """Rank with the batch dimension: 2 ([N, F]) or 4 ([N, C, H, W])."""
        return len(self.shape) + 1


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the user sees it: NCHW (or [N, F]) with ``None`` batch.
    ``key``: for the outputs of a model that returns a dict, the dict key of this output
    (``Model.predict`` then returns a dict); None otherwise."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def output_json(self) -> dict[str, Any]:
        """The entry of the file's ``outputs`` list: name, shape and the key if any."""
        entry: dict[str, Any] = {"name": self.name, "shape": list(self.shape)}
        if self.key is not None:
            entry["key"] = self.key
        return entry


@dataclass(frozen=True)
class ParamSpec:
    """What a node expects of one parameter tensor: its dtype and the allowed shapes."""

    dtype: str
    shapes: tuple[tuple[int, ...], ...]
    required: bool = True


@dataclass
class Node:
    """One op of the graph: ``outputs = op(inputs; attrs, params)``.

    ``params`` map a role to an array (writer) or to a tensor key (a graph read from a file);
    ``attrs`` of a checked node hold the parsed values with the registry's defaults filled in;
    ``index`` is the position in the file's node list (-1 while a writer builds the graph).
    """

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    index: int = -1

    @property
    def where(self) -> str:
        return f"node {self.index} {self.name!r} ({self.op})"


@dataclass
class Graph:
    """A whole network: input/output specs, nodes in execution order, every value's info."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    nodes: list[Node]
    values: dict[str, ValueInfo] = field(default_factory=dict)

    def producers(self) -> dict[str, Node]:
        """Value name -> the node that writes it."""
        return {out: node for node in self.nodes for out in node.outputs}

    def use_counts(self) -> Counter[str]:
        """Value name -> how many node inputs and graph outputs read it."""
        counts: Counter[str] = Counter()
        for node in self.nodes:
            counts.update(node.inputs)
        counts.update(spec.name for spec in self.outputs)
        return counts

    def to_file_parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The graph JSON (``docs/IR.md``) and the tensors it names, keyed ``node.role``
        (writer form: ``params`` hold arrays; float64 ones are stored as float32)."""
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
            "format": FORMAT,
            "version": VERSION,
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.output_json() for spec in self.outputs],
            "nodes": nodes,
        }
        return graph, tensors


def is_int(value: Any) -> bool:
    """True for a JSON integer (Python int, not bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def pool_output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool
) -> int:
    """torch's pooling output length: floor or ceil of (L + 2p - d(k-1) - 1) / s, plus 1; with
    ceil_mode the last window must start inside the input or the left padding (PyTorch's rule
    in ``pooling_output_shape``)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out
