"""The runtime's op registry: every op of the packed file declared once.

An :class:`OpDef` says everything the rest of the project needs to know about one op:

- its **inputs**: how many, their kind (``"float"`` or packed ``"bits"``) and ranks;
- its **attrs**: name, type, bounds and default (:class:`Attr`); every integer attr has an
  upper bound, so no kernel loop or index computed from a file can leave int64;
- its **params**: role, dtype and the shapes allowed given the attrs and the input
  (:class:`Param`);
- its **output**: its kind (``output_kind``) and its shape inferred from the inputs and attrs
  (``infer``, which also makes the checks that need both);
- its **cost** per sample: the tap visits it makes (``work``) and the bytes of scratch
  buffers its kernel allocates besides the output (``scratch``), so ``runtime.load`` can bound
  a file's demands before anything runs;
- its **implementation**: ``run(inputs, params, attrs)`` for an op the executor calls on its
  own, ``prepare(node, weight, input)`` for a producer (a kernel that absorbs a fused
  epilogue): it re-lays out the weight once and gives ``bind(epilogue) -> call(x,
  residual, out=None)`` (``out``: the array to write the floats into, possibly the
  residual's), bound once per step, so a call does no more than its input asks; and its
  **fusion role**: ``"producer"``, or the epilogue stage it can fill (``"affine"``, ``"add"``,
  ``"activation"``, ``"quantize"``), or ``"maxpool"`` (a pool a producer declared with
  ``prepare_maxpool`` may absorb after its chain), or ``None``; a fusable op's
  ``epilogue(params, attrs)`` gives the options of ``kernels.make_epilogue`` that compute it
  inside the producer's kernel (``add`` needs none: its other input is the kernel's residual);
- ``integer_output``: its float output holds exact integers (the popcount sums), which lets
  ``passes.export.fold`` round the next threshold exactly;
- ``side_quantize`` (producers): its kernel can write a fused chain's float output and that
  output's quantized bits in one pass (a block output read by the next binary layer's
  ``quantize`` and by a shortcut);
- ``prepare_maxpool`` (producers): ``prepare_maxpool(node, weight, input, pool, pool_output)``
  gives ``bind(epilogue, quantize) -> call(x)`` that runs the producer, its chain and the max
  pool (fusion role ``"maxpool"``) that reads the chain's output, in one kernel that never
  stores the producer's output, and writes the pooled floats' bits when ``quantize`` is
  given; or None where its kernel cannot (``runtime.graph`` says when it is asked);
- its **semantics** in one line, for the op table of ``docs/IR.md``.

Everything else derives from these declarations: validation of a file
(``runtime.validate``), the execution plan and its fusion (``runtime.graph``), the writer's
node builder (:func:`make_node`, used by ``binarize.pack``), the reference interpreter's
coverage in the tests, and the op table in ``docs/IR.md`` (:func:`op_table`; a test checks the
document against it). The ops themselves are declared next to their implementations in the
modules of ``runtime/ops/``; importing ``runtime.ops`` fills :data:`OPS`.

Adding an op: declare it with :func:`register` in the ``runtime/ops`` module of its family
(with its implementation), add its torch spelling to ``passes/spellings.py`` and its
handler to ``passes/export/lower.py``, a naive reference to ``tests/runtime/rt_reference.py``,
and regenerate the table of ``docs/IR.md`` (``python -m runtime.registry``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import InvalidModelError
from runtime.schema import Node, ParamSpec, ValueInfo, is_int

Attrs = Mapping[str, Any]
Params = Mapping[str, np.ndarray]


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()
"""Default of an attr the writer must always give."""

# Bounds shared by the declarations. Sizes of values are capped separately
# (``schema.MAX_VALUE_ELEMENTS``), so products of these stay far inside int64.
MAX_CHANNELS = 1 << 20
MAX_WINDOW = 1 << 12  # kernel, stride, padding, dilation along one axis
MAX_SCALE = 1 << 10  # upsampling factor along one axis


@dataclass(frozen=True)
class Attr:
    """One attribute: ``kind`` is ``int``, ``pair`` (an integer or [h, w]), ``choice``,
    ``flag`` (bool), ``number`` (finite float) or ``bound`` (finite float or null)."""

    name: str
    kind: str
    default: Any = REQUIRED
    minimum: int = 0
    maximum: int = MAX_CHANNELS
    choices: tuple[Any, ...] = ()
    doc: str = ""
    default_from: str = ""  # when omitted, the (parsed) value of this earlier attr

    def describe(self) -> str:
        text = self.name
        if self.kind == "choice":
            text += " (" + " / ".join(json_repr(c) for c in self.choices) + ")"
        if self.default_from:
            text += f" = {self.default_from}"
        elif self.default is not REQUIRED:
            text += f" = {json_repr(self.default)}"
        return text


def json_repr(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(json_repr(v) for v in value) + "]"
    return str(value)


ShapeRule = Callable[[Attrs, Sequence[ValueInfo]], tuple[tuple[int, ...], ...]]


@dataclass(frozen=True)
class Param:
    """One parameter role: its dtype and the shapes it may have (``shapes(attrs, inputs)``)."""

    role: str
    dtype: str
    shapes: ShapeRule
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Inputs:
    """``count`` inputs (``None``: one or more) of ``kind`` with a rank in ``ranks``."""

    kind: str = "float"
    ranks: tuple[int, ...] = (2, 4)
    count: int | None = 1


Fail = Callable[[str], InvalidModelError]
Infer = Callable[[Attrs, Sequence[ValueInfo], Fail], tuple[int, ...]]
Cost = Callable[[Attrs, Sequence[ValueInfo], ValueInfo], int]
Run = Callable[[Sequence[np.ndarray], Params, Attrs], np.ndarray]


def same_as_input(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    """Output shape of an elementwise op: that of its first input."""
    return ins[0].shape


def elements(attrs: Attrs, ins: Sequence[ValueInfo], out: ValueInfo) -> int:
    """Work of an elementwise op: one visit per output element."""
    return math.prod(out.shape)


def no_scratch(attrs: Attrs, ins: Sequence[ValueInfo], out: ValueInfo) -> int:
    return 0


@dataclass(frozen=True)
class OpDef:
    """The declaration of one op (see the module docstring for each field)."""

    name: str
    semantics: str
    inputs: Inputs = Inputs()
    attrs: tuple[Attr, ...] = ()
    params: tuple[Param, ...] = ()
    output_kind: str = "float"
    infer: Infer = same_as_input
    run: Run | None = None
    prepare: Callable[..., Any] | None = None
    fusion: str | None = None
    epilogue: Callable[[Params, Attrs], dict[str, Any]] | None = None
    integer_output: bool = False
    side_quantize: bool = False
    prepare_maxpool: Callable[..., Any] | None = None
    work: Cost = elements
    scratch: Cost = no_scratch

    @property
    def attr_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attrs)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(p.role for p in self.params)

    def check(
        self, where: str, raw_attrs: Mapping[str, Any], ins: Sequence[ValueInfo]
    ) -> tuple[dict[str, Any], ValueInfo, dict[str, ParamSpec]]:
        """Parse and check ``raw_attrs`` for inputs ``ins``: returns the parsed attrs (defaults
        filled in), the output value and the spec of each param role; raises
        ``InvalidModelError`` naming ``where`` on the first violation."""

        def fail(message: str) -> InvalidModelError:
            return InvalidModelError(f"{where}: {message}")

        self._check_inputs(ins, fail)
        unknown = sorted(set(raw_attrs) - set(self.attr_names))
        if unknown:
            raise fail(
                f"unknown attrs {unknown}; this op takes {sorted(self.attr_names)} (docs/IR.md)"
            )
        attrs: dict[str, Any] = {}
        for attr in self.attrs:
            attrs[attr.name] = _read_attr(attr, raw_attrs, attrs, fail)
        out = ValueInfo(self.output_kind, tuple(self.infer(attrs, ins, fail)))
        specs = {
            p.role: ParamSpec(p.dtype, tuple(p.shapes(attrs, ins)), p.required) for p in self.params
        }
        return attrs, out, specs

    def _check_inputs(self, ins: Sequence[ValueInfo], fail: Fail) -> None:
        expected = self.inputs.count
        if (expected is None and not ins) or (expected is not None and len(ins) != expected):
            raise fail(
                f"takes {'one or more' if expected is None else expected} inputs, got {len(ins)}"
            )
        for i, value in enumerate(ins):
            if value.kind != self.inputs.kind:
                hint = (
                    "insert a quantize node before it"
                    if self.inputs.kind == "bits"
                    else "binary values must go through bconv2d/bdense first"
                )
                raise fail(f"input {i} must be {self.inputs.kind} but is {value.kind}; {hint}")
            if value.rank not in self.inputs.ranks:
                raise fail(
                    f"input {i} must have rank {' or '.join(map(str, self.inputs.ranks))}, "
                    f"got rank {value.rank} (shape [N, {dims(value)}])"
                )


def dims(value: ValueInfo) -> str:
    return ", ".join(map(str, value.shape))


def _read_attr(attr: Attr, raw: Mapping[str, Any], parsed: Mapping[str, Any], fail: Fail) -> Any:
    if attr.name in raw:
        value = raw[attr.name]
    elif attr.default_from:
        return parsed[attr.default_from]
    elif attr.default is REQUIRED:
        raise fail(f"missing attr {attr.name!r}; docs/IR.md lists the attrs of each op")
    else:
        value = attr.default
    bounds = f">= {attr.minimum} and <= {attr.maximum}"
    if attr.kind == "int":
        if not is_int(value) or not attr.minimum <= value <= attr.maximum:
            raise fail(f"attr {attr.name!r} must be an integer {bounds}, got {value!r}")
        return int(value)
    if attr.kind == "pair":
        if is_int(value):
            value = [value, value]
        if (
            not isinstance(value, list | tuple)
            or len(value) != 2
            or not all(is_int(v) and attr.minimum <= v <= attr.maximum for v in value)
        ):
            raise fail(
                f"attr {attr.name!r} must be an integer or a pair of integers {bounds}, "
                f"got {value!r}"
            )
        return (int(value[0]), int(value[1]))
    if attr.kind == "choice":
        if not any(type(value) is type(c) and value == c for c in attr.choices):  # 1.0 is not 1
            raise fail(f"attr {attr.name!r} must be one of {list(attr.choices)}, got {value!r}")
        return value
    if attr.kind == "flag":
        if not isinstance(value, bool):
            raise fail(f"attr {attr.name!r} must be true or false, got {value!r}")
        return value
    if attr.kind in ("number", "bound"):
        if value is None and attr.kind == "bound":
            return None
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise fail(f"attr {attr.name!r} must be a finite number, got {value!r}")
        if abs(value) > 3.0e38:
            raise fail(f"attr {attr.name!r} is {value!r}, beyond float32's range")
        return float(value)
    raise AssertionError(f"unknown attr kind {attr.kind!r}")


OPS: dict[str, OpDef] = {}
"""Op name -> declaration, in the order of ``docs/IR.md``'s table (filled by ``runtime.ops``)."""

FUSION_STAGES = ("affine", "add", "activation", "quantize")
"""The epilogue stages a producer's kernel can absorb, in the order it evaluates them."""


def register(op: OpDef) -> OpDef:
    """Declare ``op`` (once: a second declaration of the same name is a programming error)."""
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} is declared twice")
    if op.fusion not in (None, "producer", "maxpool", *FUSION_STAGES):
        raise ValueError(f"op {op.name!r}: unknown fusion role {op.fusion!r}")
    if (op.run is None) == (op.prepare is None):
        raise ValueError(f"op {op.name!r} needs exactly one of run and prepare")
    if op.fusion in ("affine", "activation", "quantize") and op.epilogue is None:
        raise ValueError(f"op {op.name!r} has fusion role {op.fusion!r} but no epilogue")
    if (op.side_quantize or op.prepare_maxpool) and op.fusion != "producer":
        raise ValueError(f"op {op.name!r}: only a producer can take a side quantize or a pool")
    OPS[op.name] = op
    return op


def get(name: str) -> OpDef:
    """The declaration of op ``name``; ``InvalidModelError`` for an unknown op."""
    _load()
    try:
        return OPS[name]
    except KeyError:
        raise InvalidModelError(f"unknown op {name!r}; this runtime knows {sorted(OPS)}") from None


def all_ops() -> dict[str, OpDef]:
    """Every declared op, by name."""
    _load()
    return OPS


def _load() -> None:
    if not OPS:
        import runtime.ops  # noqa: F401  (declares every op)


def make_node(
    op: str,
    name: str,
    inputs: Sequence[str],
    attrs: Mapping[str, Any] | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    output: str | None = None,
) -> Node:
    """The writer's node builder: a :class:`~runtime.schema.Node` of ``op`` whose attr names
    and param roles are checked against its declaration now (values and shapes are checked
    with the whole graph when the file is written). ``output`` defaults to ``name``."""
    definition = get(op)
    attrs = dict(attrs or {})
    params = dict(params or {})
    where = f"building node {name!r} ({op})"
    unknown = sorted(set(attrs) - set(definition.attr_names))
    if unknown:
        raise InvalidModelError(f"{where}: unknown attrs {unknown}; takes {definition.attr_names}")
    missing = [
        a.name
        for a in definition.attrs
        if a.default is REQUIRED and not a.default_from and a.name not in attrs
    ]
    if missing:
        raise InvalidModelError(f"{where}: missing attrs {missing}")
    roles = sorted(set(params) - set(definition.roles))
    if roles:
        raise InvalidModelError(f"{where}: unknown param roles {roles}; takes {definition.roles}")
    absent = [p.role for p in definition.params if p.required and p.role not in params]
    if absent:
        raise InvalidModelError(f"{where}: missing params {absent}")
    return Node(op, name, list(inputs), [output or name], attrs, params)


def op_table() -> str:
    """The markdown op table of ``docs/IR.md``, generated from the declarations."""
    rows = [
        "| op | inputs -> output | attrs (= default) | params | semantics |",
        "|---|---|---|---|---|",
    ]
    for op in all_ops().values():
        count = "k" if op.inputs.count is None else str(op.inputs.count)
        ranks = "/".join(map(str, op.inputs.ranks))
        flow = f"{count} {op.inputs.kind} (rank {ranks}) -> {op.output_kind}"
        attrs = ", ".join(a.describe() for a in op.attrs)
        params = ", ".join(
            f"{p.role} {p.dtype}{p.doc}" + ("" if p.required else " (optional)") for p in op.params
        )
        rows.append(f"| `{op.name}` | {flow} | {attrs} | {params} | {op.semantics} |")
    return "\n".join(rows)


if __name__ == "__main__":  # the module run as a script is a copy: ask the imported one
    from runtime import registry

    print(registry.op_table())
