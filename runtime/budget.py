"""What a packed model will ask of the machine, proved from its checked graph before it runs.

A file from outside is hostile until proven otherwise: a 500-byte graph can ask ``predict``
for hours of work or hundreds of GiB (a max-pool with a huge kernel, a padded copy of a tiny
input, an im2col of a huge padding). ``runtime.load`` therefore computes, per sample, from the
op declarations of ``runtime.registry`` and the execution plan of ``runtime.graph``:

- **work**: the sum over nodes of the op's declared ``work`` (tap visits: multiply-adds,
  popcount words, window reads, element visits);
- **memory**: the peak, over the plan's steps, of the bytes alive while a step runs: every
  value computed and not yet released (``Step.release``), the step's own output, and the
  scratch buffers its kernel allocates (the ops' declared ``scratch``: padded input copies,
  im2col columns, GEMM results); the inputs count once (the runtime's NHWC copies; the
  caller's arrays are the caller's) and the outputs twice at the end (their NCHW copies).

``predict`` runs batches in chunks; the chunk size is the largest up to ``MAX_CHUNK`` whose
memory fits ``max_memory``, so the whole predict never holds more than ``max_memory`` bytes of
activations (parameters come on top; they are the file's size). A model whose one sample does
not fit, or whose work per sample exceeds ``max_work``, is refused with ``InvalidModelError``.
The limits are arguments of ``runtime.load``; the defaults (:data:`DEFAULT_MAX_MEMORY`,
:data:`DEFAULT_MAX_WORK`) admit any ImageNet-sized classifier or pose network with room to
spare (ResNet-50 at 224x224 is ~4e9 work and ~50 MB per sample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.errors import InvalidModelError
from runtime.graph import Step
from runtime.kernels.pack import words_for
from runtime.registry import all_ops
from runtime.schema import Graph, ValueInfo

MAX_CHUNK = 64
DEFAULT_MAX_MEMORY = 4 << 30  # bytes of activations and scratch one predict may hold at once
DEFAULT_MAX_WORK = 1 << 37  # tap visits per sample (~1.4e11: ~35x a ResNet-50)


@dataclass(frozen=True)
class Budget:
    """Per-sample work and peak memory of a model, and the chunk size ``predict`` uses."""

    work_per_sample: int
    memory_per_sample: int
    chunk: int


def value_bytes(value: ValueInfo) -> int:
    """Bytes of one sample of ``value`` in the runtime's layout."""
    if value.kind == "bits":
        return 8 * words_for(value.channels) * math.prod(value.shape[1:])
    return 4 * math.prod(value.shape)


def measure(graph: Graph, steps: Sequence[Step]) -> tuple[int, int]:
    """(work, peak memory) per sample of running ``steps`` (the plan of ``graph``)."""
    ops = all_ops()
    values = graph.values
    work = 0
    for node in graph.nodes:
        definition = ops[node.op]
        ins = [values[name] for name in node.inputs]
        work += definition.work(node.attrs, ins, values[node.outputs[0]])
    live = {spec.name: value_bytes(values[spec.name]) for spec in graph.inputs}  # NHWC copies
    peak = sum(live.values())
    for step in steps:
        producer = step.nodes[0]
        scratch = ops[producer.op].scratch(
            producer.attrs, [values[name] for name in producer.inputs], values[producer.outputs[0]]
        )
        outs = {name: value_bytes(values[name]) for name in step.outputs}
        peak = max(peak, sum(live.values()) + sum(outs.values()) + scratch)
        live.update(outs)
        for name in step.release:
            live.pop(name, None)
    outputs = sum(value_bytes(values[spec.name]) for spec in graph.outputs)
    peak = max(peak, sum(live.values()) + outputs)  # the NCHW copies of the outputs
    return work, peak


def check_budget(
    graph: Graph,
    steps: Sequence[Step],
    max_memory: int = DEFAULT_MAX_MEMORY,
    max_work: int = DEFAULT_MAX_WORK,
) -> Budget:
    """The model's :class:`Budget`, or ``InvalidModelError`` when it exceeds the limits."""
    for name, limit in (("max_memory", max_memory), ("max_work", max_work)):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"{name} must be a positive integer, got {limit!r}")
    work, memory = measure(graph, steps)
    if work > max_work:
        raise InvalidModelError(
            f"the model needs {work:.3g} tap visits per sample, over the limit max_work="
            f"{max_work:.3g}; if you trust this file, load it with a larger max_work"
        )
    if memory > max_memory:
        raise InvalidModelError(
            f"the model needs {memory / 2**20:.1f} MiB of activations per sample, over the "
            f"limit max_memory={max_memory / 2**20:.1f} MiB; if you trust this file, load it "
            "with a larger max_memory"
        )
    return Budget(work, memory, max(1, min(MAX_CHUNK, max_memory // memory)))
