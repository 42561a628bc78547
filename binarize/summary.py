"""``binarize.summary``: per-layer bits, parameters, packed memory and MACs, with totals.

Like Larq's ``summary``: one row per layer call (every leaf module call of the traced graph),
then totals. Counting rules (per sample, i.e. divided by the example batch size):

* MACs of a convolution: ``out_elements * (C_in / groups) * kh * kw``; of a linear layer:
  ``out_elements * in_features``. They are *binary* MACs for ``BinaryConv2d`` /
  ``BinaryLinear`` (xnor + popcount at run time) and *float* MACs otherwise. The small fully
  connected hyper heads of DySign / DyPReLU add ``in * out`` float MACs each (they act on the
  pooled ``[N, C]`` vector once per sample).
* OPs as ReActNet and Bi-Real count them: ``OPs = BOPs / 64 + FLOPs`` (a 64-bit popcount does
  64 binary MACs).
* Packed size: the length of the file ``binarize.pack`` writes, measured by exporting the
  network on the example inputs (``binarize.packed_size``: container header, graph JSON and
  tensors); a layer's memory is the bytes of the exported tensors lowered from it, after
  folding (a BatchNorm folded into the next binarizer's threshold keeps none). A network
  that cannot be exported gets an estimate instead, and the totals say so and why: 64 bits
  per output and tap for every 64 input channels of a binary weight (its packed words); 32
  bits per float parameter that survives packing; a BatchNorm folds into a per-channel
  affine (``2 C`` floats); a binary layer's ``alpha_o`` and bias fold into the BatchNorm
  that reads it, or become their own ``2 O``-float affine when none does.
* Float-equivalent size: every parameter and floating-point buffer at 32 bits (the float
  checkpoint of the same network); the compression ratio is that over the packed size.

For a converted network every conv / linear call also shows the layer selection's decision
and its reason (``passes.select``: "global default", "first layer (reads a graph input)",
"squeeze-excitation branch", "name 'layer4' in keep_float", ...), in the table's "Decision"
section and as ``LayerRow.decision``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate
from torch import fx, nn

from binarize.packed_size import ExportedSize, exported_size
from operators import BinaryConv2d, BinaryLinear
from operators.errors import ConversionError
from passes.select import META_KEY, Decision
from passes.shapes import input_tuple, propagate_shapes
from passes.trace import trace

_BINARY = (BinaryConv2d, BinaryLinear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class LayerRow:
    """One layer call. ``input_bits`` / ``weight_bits`` are None for layers without weights;
    ``parameters`` are counted at a module's first call only; ``memory_bytes`` are those of
    this call's exported tensors (of the first call only when estimated).
    ``decision`` is ``"binary: <reason>"`` or ``"float: <reason>"`` for each conv / linear call
    the layer selection decided (None for other layers and for unconverted models)."""

    name: str
    kind: str
    input_bits: int | None
    weight_bits: int | None
    parameters: int
    memory_bytes: float
    float_macs: int
    binary_macs: int
    output_shape: tuple[int, ...]
    decision: str | None = None


@dataclass(frozen=True)
class Totals:
    """Whole-model numbers (MACs and OPs per sample, sizes in bytes)."""

    parameters: int
    float_size_bytes: float
    packed_size_bytes: float
    compression: float
    float_macs: int
    binary_macs: int
    binary_mac_share: float
    ops: float
    packed_size_exact: bool = False
    packed_size_note: str = ""


@dataclass(frozen=True)
class ModelSummary:
    """What :func:`summary` prints, as data: the rows and the totals."""

    rows: list[LayerRow]
    totals: Totals

    def table(self) -> str:
        """The per-layer table, the layer selection's decisions (converted networks) and the
        totals, as text."""
        headers = ["Layer", "Kind", "In bits", "W bits", "Params", "Memory", "Float MACs",
                   "Binary MACs", "Output"]  # fmt: skip
        body = [
            [row.name, row.kind, _dash(row.input_bits), _dash(row.weight_bits), row.parameters,
             _bytes(row.memory_bytes), row.float_macs, row.binary_macs,
             "x".join(map(str, row.output_shape))]
            for row in self.rows
        ]  # fmt: skip
        t = self.totals
        totals = [
            ["Parameters", f"{t.parameters:,}"],
            ["Float-equivalent size", _bytes(t.float_size_bytes)],
            ["Packed size", f"{_bytes(t.packed_size_bytes)} ({t.packed_size_note})"],
            ["Compression", f"{t.compression:.1f}x"],
            ["Float MACs", f"{t.float_macs:,}"],
            ["Binary MACs", f"{t.binary_macs:,}"],
            ["Binary share of MACs", f"{100 * t.binary_mac_share:.1f}%"],
            ["OPs (BOPs/64 + FLOPs)", f"{t.ops:,.0f}"],
        ]
        decisions = [[row.name, row.decision] for row in self.rows if row.decision is not None]
        sections = [tabulate(body, headers, intfmt=",")]
        if decisions:
            sections.append(tabulate(decisions, ["Layer", "Decision"]))
        sections.append(tabulate(totals, tablefmt="plain"))
        return "\n\n".join(sections)

    def __str__(self) -> str:
        return self.table()


def summary(
    model: nn.Module,
    example_inputs: Any,
    *,
    print_fn: Callable[[str], Any] | None = print,
) -> ModelSummary:
    """Summarize a ``BinaryModel``, a GraphModule, or a plain float model.

    Args:
        model: a converted ``BinaryModel`` (its student is summarized), an
            ``fx.GraphModule``, or any traceable ``nn.Module``.
        example_inputs: a tensor or a tuple/list of tensors; shapes and MACs are for these,
            reported per sample.
        print_fn: called with the table text; None prints nothing.

    Returns:
        A :class:`ModelSummary` with the rows and totals (see the module docstring for how
        each number is counted).
    """

    inputs = input_tuple(example_inputs)
    student = getattr(model, "student", model)
    gm = student if isinstance(student, fx.GraphModule) else trace(student)
    propagate_shapes(gm, inputs)  # first: a model that does not run fails here, named
    exported = _export(gm, inputs)
    propagate_shapes(gm, inputs)  # the export ran its own shape pass
    batch = int(inputs[0].shape[0]) if getattr(inputs[0], "dim", lambda: 0)() else 1
    rows = _rows(gm, batch, exported)
    result = ModelSummary(rows, _totals(gm, rows, exported))
    if print_fn is not None:
        print_fn(result.table())
    return result


def _export(gm: fx.GraphModule, inputs: Sequence[Any]) -> ExportedSize | str:
    """The exported file's sizes, or why the network cannot be exported (the first line)."""
    from runtime.errors import InvalidModelError

    try:
        return exported_size(gm, inputs)
    except (ConversionError, InvalidModelError) as error:
        return str(error).splitlines()[0]


def _rows(gm: fx.GraphModule, batch: int, exported: ExportedSize | str) -> list[LayerRow]:

    rows: list[LayerRow] = []
    seen: set[int] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        first_call = id(module) not in seen
        seen.add(id(module))
        shape = tuple(getattr(node.meta.get("tensor_meta"), "shape", ()))
        macs = _weight_macs(module, shape, batch)
        binary = isinstance(module, _BINARY)
        has_weights = isinstance(module, (nn.Conv2d, nn.Linear))
        rows.append(
            LayerRow(
                name=str(node.target),
                kind=type(module).__name__,
                input_bits=(1 if binary and _binarizes_input(module) else 32) if has_weights
                else None,
                weight_bits=(1 if binary else 32) if has_weights else None,
                parameters=_count(module.parameters()) if first_call else 0,
                memory_bytes=_memory_bytes(gm, node, module, first_call, exported),
                float_macs=(0 if binary else macs) + _hyper_head_macs(module),
                binary_macs=macs if binary else 0,
                output_shape=shape[1:],
                decision=_decision(node.meta.get(META_KEY)),
            )
        )  # fmt: skip
    return rows


def _decision(decision: Decision | None) -> str | None:
    """``"binary: reason"`` / ``"float: reason"`` for a ``passes.select.Decision``."""
    if decision is None:
        return None
    return f"{'binary' if decision.binary else 'float'}: {decision.reason}"


def _memory_bytes(
    gm: fx.GraphModule,
    node: fx.Node,
    module: nn.Module,
    first_call: bool,
    exported: ExportedSize | str,
) -> float:
    """Exported bytes of this call, or the estimate of its module at its first call."""
    if isinstance(exported, ExportedSize):
        return float(exported.node_bytes.get(node.name, 0))
    return _packed_bits(gm, node, module) / 8 if first_call else 0.0


def _totals(gm: fx.GraphModule, rows: Sequence[LayerRow], exported: ExportedSize | str) -> Totals:
    float_bytes = 4 * _count(t for t in (*gm.parameters(), *gm.buffers()) if t.is_floating_point())
    layers = sum(row.memory_bytes for row in rows)
    if isinstance(exported, ExportedSize):
        packed = exported.file_bytes
        other = exported.tensor_bytes - layers  # tensors of ops that are no layer call
        note = (
            f"the file binarize.pack writes: {_bytes(layers)} in the layers above"
            + (f", {_bytes(other)} in other ops" if other else "")
            + f", {_bytes(exported.header_bytes)} header and graph JSON"
        )
    else:
        packed = layers
        note = f"estimate, the network cannot be exported: {exported}"
    float_macs = sum(row.float_macs for row in rows)
    binary_macs = sum(row.binary_macs for row in rows)
    all_macs = float_macs + binary_macs
    return Totals(
        parameters=_count(gm.parameters()),
        float_size_bytes=float(float_bytes),
        packed_size_bytes=float(packed),
        compression=float_bytes / packed if float_bytes and packed else 1.0,
        float_macs=float_macs,
        binary_macs=binary_macs,
        binary_mac_share=binary_macs / all_macs if all_macs else 0.0,
        ops=binary_macs / 64 + float_macs,
        packed_size_exact=isinstance(exported, ExportedSize),
        packed_size_note=note,
    )


def _weight_macs(module: nn.Module, shape: tuple[int, ...], batch: int) -> int:
    """MACs per sample of a conv or linear layer with output ``shape`` (0 for others)."""
    outputs = 1
    for size in shape:
        outputs *= size
    outputs //= max(batch, 1)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return outputs * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return outputs * module.in_features
    return 0


def _hyper_head_macs(module: nn.Module) -> int:
    """Float MACs of the linear layers nested in ``module`` (DySign / DyPReLU heads)."""
    return sum(
        inner.in_features * inner.out_features
        for inner in module.modules()
        if isinstance(inner, nn.Linear) and inner is not module
    )


def _binarizes_input(module: nn.Module) -> bool:
    return not isinstance(getattr(module, "input_binarizer", nn.Identity()), nn.Identity)


def _packed_bits(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> int:
    """Bits ``module`` keeps after packing (see the module docstring)."""
    if isinstance(module, _NORMS):
        return 32 * 2 * module.num_features
    if not isinstance(module, _BINARY):
        return 32 * _count(module.parameters())
    outputs, in_channels = module.weight.shape[:2]
    taps = module.weight[0, 0].numel()  # kh * kw, or 1 for a linear layer
    weight_words = outputs * taps * -(-in_channels // 64)
    binarizer = _count(module.input_binarizer.parameters())
    readers = [gm.get_submodule(str(u.target)) for u in node.users if u.op == "call_module"]
    read_by_norm = len(node.users) == 1 and len(readers) == 1 and isinstance(readers[0], _NORMS)
    affine = 0 if read_by_norm else 2 * outputs
    return 64 * weight_words + 32 * (binarizer + affine)


def _count(tensors: Any) -> int:
    return sum(tensor.numel() for tensor in tensors)


def _dash(value: int | None) -> str | int:
    return "-" if value is None else value


def _bytes(size: float) -> str:
    if size < 1024:
        return f"{size:,.0f} B"
    if size < 1024**2:
        return f"{size / 1024:,.1f} KiB"
    return f"{size / 1024**2:,.1f} MiB"
