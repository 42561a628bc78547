"""The typed form of a packed model's graph (docs/IR.md) and the size rules shared by the
checker (runtime/validate.py) and the executor (runtime/graph.py).

Shapes here are in the NCHW terms of the PyTorch graph without the batch dimension: ``(C, H, W)``
for rank-4 values and ``(F,)`` for rank-2 ones; the runtime's NHWC layout is the executor's
business (runtime/graph.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "binarize.packed"
VERSION = 1
# No single value may hold more elements per sample than this: a guard against absurd attrs
# (a 10^6 upsampling factor) before any buffer is allocated. ~1 GiB of float32 per sample.
MAX_VALUE_ELEMENTS = 1 << 28
HYPER_ACTIVATIONS = ("relu", "identity", "sigmoid", "tanh")
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


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the user sees it: NCHW (or [N, F]) with ``None`` batch."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ParamSpec:
    """What a node expects of one parameter tensor: its dtype and the allowed shapes."""

    dtype: str
    shapes: tuple[tuple[int, ...], ...]
    required: bool = True


@dataclass
class Node:
    """One checked node: ``attrs`` hold parsed values with defaults filled in, ``params`` map a
    role to a tensor key, ``index`` is the position in the file's node list."""

    index: int
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    params: dict[str, str]

    @property
    def where(self) -> str:
        return f"node {self.index} {self.name!r} ({self.op})"


@dataclass
class Graph:
    """A checked graph: nodes in execution order and the kind/shape of every value."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    nodes: list[Node]
    values: dict[str, ValueInfo] = field(default_factory=dict)


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
