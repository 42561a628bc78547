"""Execution plan of a checked graph: fusion, kernel preparation, buffer liveness.

``plan_graph(graph, arrays)`` turns the file's op list (docs/IR.md: the unfused computation)
into a list of ``Step``s, each one kernel or numpy call:

- **Fusion into kernel epilogues.** A producer (an op whose registry declaration has fusion role
  ``"producer"``: ``bconv2d``, ``bdense``, ``conv2d``, ``dense``) absorbs the chain that follows
  it, in this order, each stage optional and filled by an op declared with that fusion role:
  ``affine -> add -> activation (prelu | rprelu | relu | leaky_relu) -> quantize``, as long as every
  intermediate value has exactly one consumer and is not a graph output (so nobody else needs
  it). A float conv/dense with a bias keeps the bias as the epilogue's affine and absorbs no
  further ``affine``. ``relu`` and ``leaky_relu`` run as PReLU with slope 0 or the given slope.
  The runtime/kernels epilogue evaluates the stages in the unfused order in float32, so fusion
  changes no bit of a binary layer's output. A fused step runs at the position of its chain's
  last node, where every outside input of the chain (the residual of ``add``) already exists.
  Binary producers claim their chains first: where a float downsample conv's chain and a binary
  conv's chain end in the same ``add``, the binary kernel takes it.
- **Side quantize.** A chain's float output that other ops read too (a block output feeding
  the next binary layer's ``quantize`` and the next shortcut) cannot absorb that quantize as
  its last stage. A producer declared with ``side_quantize`` (``bconv2d``) takes it anyway:
  its kernel writes the floats and their bits in one pass (``keep_float`` epilogue), and the
  step has two outputs, saving the quantize's own pass over the floats and its call.
- **Max pool after a conv.** A producer declared with ``prepare_maxpool`` (``conv2d`` on the
  direct path) whose chain has no ``add`` and no ``quantize`` also absorbs the max pool
  (fusion role ``"maxpool"``, dilation 1) that is the only reader of the chain's output: the
  kernel computes the conv rows each pool window needs into a small ring and pools them
  there (runtime/kernels/conv_pool.py), so the conv's output, a stem's largest tensor, is
  never stored. A quantize among the pool output's readers becomes the step's side quantize.
- **Layout.** Values are NHWC (float32) or packed bits (uint64); the graph inputs are converted
  from NCHW once, rank-4 outputs back to NCHW at the end (``Model.predict``).
- **Liveness.** Each step lists the values it reads for the last time; the executor drops them
  right after, so peak memory is the widest cut of the graph, not its sum.
- **In place.** A fused step with an ``add`` writes its float output into its residual's
  array when no one else can see that array (``_assign_in_place``: the residual is an
  earlier producer step's new output, read by this step only, not a graph input or output):
  a ResNet block's output overwrites its shortcut instead of filling new memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import kernels
from runtime.registry import FUSION_STAGES, OpDef, all_ops
from runtime.schema import Graph, Node, ValueInfo

Run = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass
class Step:
    """One call of the plan: reads ``inputs`` (value names), writes ``output``.

    ``nodes`` are the file's nodes it computes (one, or a fused chain); ``release`` the values
    no later step reads; ``param_count``/``param_bytes`` what its parameters hold in the file.
    A step with ``overwrites`` set writes its output into that input's array (``run`` then
    changes its second input: call it on a copy to keep one).
    """

    nodes: list[Node]
    inputs: list[str]
    output: str
    run: Run
    param_count: int = 0
    param_bytes: int = 0
    release: list[str] = field(default_factory=list)
    side_output: str | None = None  # a side quantize's bits; ``run`` then returns the pair
    # a producer kernel's step: its outputs are new arrays that no other value shares
    fresh: bool = False
    # ``run`` writing its float output into its residual's array (``_assign_in_place``)
    in_place: Run | None = None
    overwrites: str | None = None  # the residual whose array ``run`` writes into, if any

    @property
    def label(self) -> str:
        return "+".join(node.op for node in self.nodes)

    @property
    def outputs(self) -> list[str]:
        """The values the step writes: ``output``, then ``side_output`` when it has one."""
        return [self.output] if self.side_output is None else [self.output, self.side_output]

    def store(self, env: dict[str, np.ndarray], result: Any) -> None:
        """Put ``result`` (what ``run`` returned) into ``env`` under the step's outputs."""
        if self.side_output is None:
            env[self.output] = result
        else:
            env[self.output], env[self.side_output] = result


def plan_graph(graph: Graph, arrays: Mapping[str, np.ndarray]) -> list[Step]:
    """Fuse, prepare kernels (weight re-layout, padding corrections) and compute liveness."""
    uses = Counter(name for node in graph.nodes for name in node.inputs)
    uses.update(spec.name for spec in graph.outputs)
    by_input: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            by_input.setdefault(name, []).append(node)

    chains: dict[int, tuple[list[Node], Node | None]] = {}  # last node -> (chain, side)
    pooled: dict[int, Callable[..., Any]] = {}  # a chain's absorbed pool -> its call's binder
    fused: set[int] = set()
    # binary producers first: where a float conv's chain and a binary conv's chain meet at the
    # same add (a downsampling shortcut), the add goes to the cheaper binary kernel epilogue
    ops = all_ops()
    producers = [node for node in graph.nodes if ops[node.op].fusion == "producer"]
    producers.sort(key=lambda node: (not ops[node.op].integer_output, node.index))
    for node in producers:
        chain = _grow_chain(node, uses, by_input, fused, ops)
        fused.update(n.index for n in chain)
        absorbed = _absorb_maxpool(chain, uses, by_input, fused, ops, graph.values, arrays)
        if absorbed is not None:
            pool, pooled[pool.index] = absorbed
            chain.append(pool)
            fused.add(pool.index)
        side = _side_quantize(chain, by_input, fused, ops, absorbed is not None)
        if side is not None:
            fused.add(side.index)
        chains[chain[-1].index] = (chain, side)

    steps = []
    for node in graph.nodes:
        if node.index in pooled:
            steps.append(_pooled_step(*chains[node.index], pooled[node.index], graph.values,
                                      arrays))
        elif node.index in chains:
            steps.append(_fused_step(*chains[node.index], graph.values, arrays))
        elif node.index not in fused:
            steps.append(_single_step(node, graph.values, arrays))
    _assign_releases(steps, {spec.name for spec in graph.outputs})
    _assign_in_place(steps, graph)
    return steps


def _grow_chain(
    producer: Node,
    uses: Mapping[str, int],
    by_input: Mapping[str, list[Node]],
    taken: set[int],
    ops: Mapping[str, OpDef],
) -> list[Node]:
    chain = [producer]
    stages = list(FUSION_STAGES)
    if "bias" in producer.params:  # a float conv/dense bias is the epilogue's affine
        stages.remove("affine")
    while True:
        value = chain[-1].outputs[0]
        consumers = by_input.get(value, [])
        if uses[value] != 1 or len(consumers) != 1:  # also stops at a graph output
            return chain
        consumer = consumers[0]
        stage = ops[consumer.op].fusion
        if (
            consumer.index in taken
            or stage not in stages
            or (stage == "add" and consumer.inputs[0] == consumer.inputs[1])
        ):
            return chain
        del stages[: stages.index(stage) + 1]
        chain.append(consumer)


def _absorb_maxpool(
    chain: list[Node],
    uses: Mapping[str, int],
    by_input: Mapping[str, list[Node]],
    taken: set[int],
    ops: Mapping[str, OpDef],
    values: Mapping[str, ValueInfo],
    arrays: Mapping[str, np.ndarray],
) -> tuple[Node, Callable[..., Any]] | None:
    """(the max pool, the fused call's binder) when the chain's producer can take the pool
    that alone reads the chain's output (module docstring: no ``add``, no ``quantize`` in the
    chain), else None."""
    producer = chain[0]
    prepare = ops[producer.op].prepare_maxpool
    if prepare is None or any(ops[n.op].fusion in ("add", "quantize") for n in chain[1:]):
        return None
    value = chain[-1].outputs[0]
    consumers = by_input.get(value, [])
    if uses[value] != 1 or len(consumers) != 1:  # also stops at a graph output
        return None
    pool = consumers[0]
    if ops[pool.op].fusion != "maxpool" or pool.index in taken:
        return None
    bind = prepare(producer, _param(arrays, producer, "weight"), values[producer.inputs[0]],
                   pool, values[pool.outputs[0]])
    return None if bind is None else (pool, bind)


def _side_quantize(
    chain: list[Node], by_input: Mapping[str, list[Node]], taken: set[int],
    ops: Mapping[str, OpDef], pooled: bool = False,
) -> Node | None:
    """The ``quantize`` among the readers of the chain's float output that the producer's kernel
    can write beside it (module docstring; a fused max pool's output too), or None."""
    if not (ops[chain[0].op].side_quantize or pooled) or ops[chain[-1].op].fusion == "quantize":
        return None
    for reader in by_input.get(chain[-1].outputs[0], []):
        if ops[reader.op].fusion == "quantize" and reader.index not in taken:
            return reader
    return None


def _param(arrays: Mapping[str, np.ndarray], node: Node, role: str) -> np.ndarray | None:
    key = node.params.get(role)
    return None if key is None else arrays[key]


def _epilogue(
    chain: list[Node], channels: int, arrays: Mapping[str, np.ndarray], keep_float: bool = False
) -> kernels.Epilogue:
    """The kernel epilogue that computes the chain after its producer (docs: module top):
    each fused op's declaration says which ``make_epilogue`` options it sets; ``keep_float``
    for a chain that ends in a side quantize."""
    options: dict[str, object] = {}
    producer = chain[0]
    if "bias" in producer.params:
        options["bias"] = _param(arrays, producer, "bias")
    for node in chain[1:]:
        options.update(_stage_options(node, arrays))
    return kernels.make_epilogue(channels, keep_float=keep_float, **options)


def _stage_options(node: Node, arrays: Mapping[str, np.ndarray]) -> dict[str, object]:
    """The ``make_epilogue`` options of one fused op (none for ``add``, a pool)."""
    contribute = all_ops()[node.op].epilogue
    if contribute is None:
        return {}
    return contribute({role: arrays[key] for role, key in node.params.items()}, node.attrs)


def _fused_step(
    chain: list[Node], side: Node | None, values: Mapping[str, ValueInfo],
    arrays: Mapping[str, np.ndarray],
) -> Step:
    """One kernel call for a producer and the chain it absorbed (see ``_grow_chain``), and its
    side quantize (``_side_quantize``) when it has one."""
    producer = chain[0]
    source = producer.inputs[0]
    channels = values[producer.outputs[0]].channels
    nodes = chain + ([side] if side else [])
    epilogue = _epilogue(nodes, channels, arrays, side is not None)
    prepare = all_ops()[producer.op].prepare
    assert prepare is not None  # producers are declared with a kernel's prepare
    call = prepare(producer, _param(arrays, producer, "weight"), values[source])(epilogue)
    adds = [node for node in chain if node.op == "add"]
    if not adds:
        inputs = [source]

        def run(xs: Sequence[np.ndarray]) -> np.ndarray:
            return call(xs[0], None)
    else:
        inner = chain[chain.index(adds[0]) - 1].outputs[0]
        inputs = [source, next(name for name in adds[0].inputs if name != inner)]

        def run(xs: Sequence[np.ndarray]) -> np.ndarray:
            return call(xs[0], xs[1])

        def in_place(xs: Sequence[np.ndarray]) -> np.ndarray:
            return call(xs[0], xs[1], xs[1])

    return Step(nodes, inputs, chain[-1].outputs[0], run, *_param_size(nodes, arrays),
                side_output=side.outputs[0] if side else None, fresh=True,
                in_place=in_place if adds else None)


def _pooled_step(
    chain: list[Node], side: Node | None, bind: Callable[..., Any],
    values: Mapping[str, ValueInfo], arrays: Mapping[str, np.ndarray],
) -> Step:
    """One kernel call for a producer, its chain and the max pool it absorbed (the chain's last
    node, ``_absorb_maxpool``), and the pool output's side quantize when it has one."""
    producer, pool = chain[0], chain[-1]
    channels = values[producer.outputs[0]].channels
    epilogue = _epilogue(chain[:-1], channels, arrays)
    quantize = None
    if side is not None:
        quantize = kernels.make_epilogue(channels, **_stage_options(side, arrays))

    call = bind(epilogue, quantize)

    def run(xs: Sequence[np.ndarray]) -> Any:
        return call(xs[0])

    nodes = chain + ([side] if side else [])
    return Step(nodes, [producer.inputs[0]], pool.outputs[0], run, *_param_size(nodes, arrays),
                side_output=side.outputs[0] if side else None, fresh=True)


def _param_size(nodes: Sequence[Node], arrays: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(parameter count, bytes in the file); a packed weight counts its real binary weights,
    rows x in_channels (or in_features), not its padding bits."""
    count, nbytes = 0, 0
    for node in nodes:
        for key in node.params.values():
            array = arrays[key]
            nbytes += array.nbytes
            if array.dtype == np.uint64:
                fan_in = node.attrs.get("in_channels", node.attrs.get("in_features"))
                count += array.size // array.shape[-1] * fan_in
            else:
                count += array.size
    return count, nbytes


def _single_step(
    node: Node, values: Mapping[str, ValueInfo], arrays: Mapping[str, np.ndarray]
) -> Step:
    """One numpy or small-kernel call for an op that no producer absorbed."""
    params = {role: arrays[key] for role, key in node.params.items()}
    function = all_ops()[node.op].run
    assert function is not None  # every op that is not a producer is declared with run

    def run(xs: Sequence[np.ndarray]) -> np.ndarray:
        return function(xs, params, node.attrs)

    return Step([node], list(node.inputs), node.outputs[0], run, *_param_size([node], arrays))


def _assign_in_place(steps: list[Step], graph: Graph) -> None:
    """Let a fused step with an ``add`` write its float output into the residual's array when
    nothing else can see that array: the residual is the float output of an earlier producer
    step (a new array, no view of anything), this step is the only one that reads it, it is
    neither a graph input (the caller's array) nor a graph output, not the step's own source,
    and it has the output's shape. The epilogue reads each residual element just before it
    writes the output element at the same place, so the overwrite is exact.

    Why: the residual and the output of a 64-channel 56x56 layer are 800 KB each, more than a
    core's L2; a new output array costs its cache lines' fills on top of the residual's reads
    (Bi-Real-18's 64-channel step, median of 600 paired calls: 27-63 us less of 0.5-0.8 ms).
    """
    readers = Counter(name for step in steps for name in step.inputs)
    fresh = {step.output for step in steps if step.fresh}
    boundary = {spec.name for spec in graph.inputs} | {spec.name for spec in graph.outputs}
    for step in steps:
        if step.in_place is None:
            continue
        source, residual = step.inputs
        into, out = graph.values[residual], graph.values[step.output]
        if (residual in fresh and readers[residual] == 1 and residual not in boundary
                and residual != source and into.kind == out.kind == "float"
                and into.shape == out.shape):
            step.run, step.overwrites = step.in_place, residual


def _assign_releases(steps: list[Step], outputs: set[str]) -> None:
    """Each value is released after the last step that reads it (graph outputs never)."""
    last_read: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in step.inputs:
            last_read[name] = i
    for name, i in last_read.items():
        if name not in outputs:
            steps[i].release.append(name)
