"""Check a packed model's graph against its op declarations before anything runs.

``check_graph(graph, tensors)`` takes the JSON graph (already decoded) and the header of the
file's tensors (``name -> (dtype, shape)``; no data needed) and returns a typed ``Graph`` whose
every value has a known kind (``"float"`` or ``"bits"``) and shape, or raises
``InvalidModelError`` naming the node, the field and the fix. It runs before any tensor data is
touched, so a hostile file costs no more than its header to reject. ``check_tensor_values``
then checks the parameter contents once they are read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from runtime.errors import InvalidModelError
from runtime.kernels.pack import WORD_BITS
from runtime.registry import all_ops, dims
from runtime.schema import (
    FORMAT,
    MAX_VALUE_ELEMENTS,
    VERSION,
    Graph,
    Node,
    ParamSpec,
    TensorSpec,
    ValueInfo,
    is_int,
)


def _fail(message: str) -> InvalidModelError:
    return InvalidModelError(message)


def _object(value: Any, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be a JSON object, got {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise _fail(f"{where} lacks {missing}")
    unknown = sorted(set(value) - set(keys) - set(optional))
    if unknown:
        raise _fail(f"{where} has unknown fields {unknown}; allowed: {[*keys, *optional]}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(f"{where} must be a non-empty string, got {value!r}")
    return value


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise _fail(f"{where} must be a list of value names, got {type(value).__name__}")
    return [_name(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _spec_shape(value: Any, where: str) -> tuple[int | None, ...]:
    if (
        not isinstance(value, list)
        or len(value) not in (2, 4)
        or value[0] is not None
        or not all(is_int(d) and d >= 1 for d in value[1:])
    ):
        raise _fail(
            f"{where} must be [null, C, H, W] or [null, F] with positive sizes "
            f"(batch left open), got {value!r}"
        )
    return tuple(value)


def _parse_spec(value: Any, where: str, shape_required: bool) -> TensorSpec:
    keys = ("name", "shape") if shape_required else ("name",)
    optional = ("dtype",) if shape_required else ("shape", "dtype", "key")
    obj = _object(value, where, keys, optional)
    name = _name(obj["name"], f"{where}.name")
    dtype = obj.get("dtype", "float32")
    if dtype != "float32":
        raise _fail(f"{where}.dtype must be 'float32', got {dtype!r}")
    shape = _spec_shape(obj["shape"], f"{where}.shape") if "shape" in obj else ()
    key = _name(obj["key"], f"{where}.key") if "key" in obj else None
    return TensorSpec(name, shape, dtype, key)


def check_graph(graph: Any, tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> Graph:
    """Check a decoded graph against docs/IR.md and the file's tensor header.

    ``tensors`` maps every tensor key in the file to its (numpy dtype name, shape). Checks, in
    order: format and version; input/output specs; per node: known op, input count, value
    names defined earlier (no dangling names, no cycles, execution order), unique output
    names, attrs (types, ranges, unknown keys), shape inference from the input spec, parameter
    roles, dtypes and shapes; every tensor used by some node; outputs float with the declared
    shapes. Returns the typed ``Graph``; raises ``InvalidModelError`` on the first violation.
    """
    top = _object(graph, "graph metadata", ("format", "version", "inputs", "outputs", "nodes"))
    if top["format"] != FORMAT:
        raise _fail(f"graph format is {top['format']!r}, expected {FORMAT!r}: not a binarize model")
    version = top["version"]
    if type(version) is not int:  # JSON true and 1.0 equal 1 in Python but are not version 1
        raise _fail(
            f"graph version must be an integer, got {version!r} ({type(version).__name__}); "
            f"this runtime reads version {VERSION}: re-pack the model with binarize.pack"
        )
    if version != VERSION:
        raise _fail(
            f"graph version is {version!r}; this runtime reads version {VERSION}: "
            "re-pack the model with a matching binarize or upgrade the runtime"
        )
    for key in ("inputs", "outputs", "nodes"):
        if not isinstance(top[key], list):
            raise _fail(f"graph {key!r} must be a list, got {type(top[key]).__name__}")
    if not top["inputs"] or not top["outputs"]:
        raise _fail("graph needs at least one input and one output")
    inputs = [_parse_spec(v, f"inputs[{i}]", True) for i, v in enumerate(top["inputs"])]
    outputs = [_parse_spec(v, f"outputs[{i}]", False) for i, v in enumerate(top["outputs"])]
    values: dict[str, ValueInfo] = {}
    for spec in inputs:
        if spec.name in values:
            raise _fail(f"graph input name {spec.name!r} is used twice")
        values[spec.name] = ValueInfo("float", tuple(int(d) for d in spec.shape[1:]))

    nodes: list[Node] = []
    node_names: set[str] = set()
    used_tensors: set[str] = set()
    for index, raw in enumerate(top["nodes"]):
        node = _check_node(index, raw, values, node_names, tensors)
        used_tensors.update(node.params.values())
        nodes.append(node)

    extra = sorted(set(tensors) - used_tensors)
    if extra:
        raise _fail(
            f"tensors {extra[:5]} are in the file but no node uses them; reference them from a "
            "node's params or leave them out of the file"
        )
    checked_outputs = []
    for i, spec in enumerate(outputs):
        value = values.get(spec.name)
        if value is None:
            raise _fail(f"outputs[{i}] names {spec.name!r}, which no node produces")
        if value.kind != "float":
            raise _fail(f"outputs[{i}] {spec.name!r} is packed bits; outputs must be float")
        shape = (None, *value.shape)
        if spec.shape and spec.shape != shape:
            raise _fail(
                f"outputs[{i}] {spec.name!r} declares shape {list(spec.shape)} but the graph "
                f"computes {list(shape)}"
            )
        checked_outputs.append(TensorSpec(spec.name, shape, key=spec.key))
    if len({s.name for s in outputs}) != len(outputs):
        raise _fail("an output name is listed twice in 'outputs'")
    keys = [s.key for s in outputs if s.key is not None]
    if keys and (len(keys) != len(outputs) or len(set(keys)) != len(keys)):
        raise _fail(
            f"output keys {[s.key for s in outputs]} must be given for every output or for none, "
            "each key once (predict returns a dict by key)"
        )
    return Graph(inputs, checked_outputs, nodes, values)


def _check_node(
    index: int,
    raw: Any,
    values: dict[str, ValueInfo],
    node_names: set[str],
    tensors: Mapping[str, tuple[str, tuple[int, ...]]],
) -> Node:
    where = f"node {index}"
    obj = _object(raw, where, ("op", "name", "inputs", "outputs"), ("attrs", "params"))
    name = _name(obj["name"], f"{where}.name")
    op = obj["op"]
    where = f"node {index} {name!r} ({op})"
    ops = all_ops()
    if not isinstance(op, str) or op not in ops:
        raise _fail(f"{where}: unknown op {op!r}; this runtime knows {sorted(ops)}")
    definition = ops[op]
    if name in node_names:
        raise _fail(f"{where}: node name {name!r} is used twice")
    node_names.add(name)
    in_names = _names(obj["inputs"], f"{where} inputs")
    out_names = _names(obj["outputs"], f"{where} outputs")
    arity = definition.inputs.count
    if (arity is None and not in_names) or (arity is not None and len(in_names) != arity):
        expected = "one or more" if arity is None else str(arity)
        raise _fail(f"{where}: takes {expected} inputs, got {len(in_names)}")
    if len(out_names) != 1:
        raise _fail(f"{where}: must have exactly one output, got {len(out_names)}")
    for value_name in in_names:
        if value_name not in values:
            raise _fail(
                f"{where}: input {value_name!r} is not a graph input nor an output of an "
                "earlier node (dangling name, cycle, or nodes out of execution order)"
            )
    if out_names[0] in values:
        raise _fail(f"{where}: output name {out_names[0]!r} is already defined earlier")
    attrs = obj.get("attrs", {})
    if not isinstance(attrs, dict):
        raise _fail(f"{where}: attrs must be a JSON object")
    params = obj.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise _fail(f"{where}: params must map roles to tensor keys (strings)")

    parsed, out_value, param_specs = definition.check(where, attrs, [values[n] for n in in_names])
    if math.prod(out_value.shape) > MAX_VALUE_ELEMENTS:
        raise _fail(
            f"{where}: output shape [N, {dims(out_value)}] is absurdly large "
            f"(> {MAX_VALUE_ELEMENTS} elements per sample); check the attrs"
        )
    _check_params(where, params, param_specs, tensors)
    values[out_names[0]] = out_value
    return Node(op, name, in_names, out_names, parsed, dict(params), index)


def _check_params(
    where: str,
    params: Mapping[str, str],
    specs: Mapping[str, ParamSpec],
    tensors: Mapping[str, tuple[str, tuple[int, ...]]],
) -> None:
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise _fail(f"{where}: unknown param roles {unknown}; this op takes {sorted(specs)}")
    for role, spec in specs.items():
        if role not in params:
            if spec.required:
                raise _fail(f"{where}: missing param {role!r}")
            continue
        key = params[role]
        if key not in tensors:
            raise _fail(f"{where}: param {role!r} names tensor {key!r}, which is not in the file")
        dtype, shape = tensors[key]
        if dtype != spec.dtype:
            raise _fail(
                f"{where}: param {role!r} ({key!r}) has dtype {dtype}, expected {spec.dtype}"
            )
        if tuple(shape) not in spec.shapes:
            allowed = " or ".join(str(list(s)) for s in spec.shapes)
            raise _fail(
                f"{where}: param {role!r} ({key!r}) has shape {list(shape)}, expected {allowed} "
                "from the node's attrs and input shape"
            )


def check_tensor_values(graph: Graph, arrays: Mapping[str, np.ndarray]) -> None:
    """Check parameter contents that the header cannot show: float parameters are finite
    (a quantize threshold may be +-inf: a channel whose bit is constant), ``sign`` holds only
    +1/-1, and the padding bits past C in packed weights are 0 (docs/IR.md), since the kernels
    count them in the popcount otherwise."""
    for node in graph.nodes:
        for role, key in node.params.items():
            array = arrays[key]
            if array.dtype == np.float32:
                bad = np.isnan(array) if role == "threshold" else ~np.isfinite(array)
                if bad.any():
                    raise _fail(f"{node.where}: param {role!r} ({key!r}) holds NaN or Inf values")
            elif role == "sign" and not np.isin(array, (-1, 1)).all():
                raise _fail(f"{node.where}: param 'sign' ({key!r}) must hold only +1 and -1")
            elif array.dtype == np.uint64:
                channels = node.attrs.get("in_channels", node.attrs.get("in_features"))
                tail = channels % WORD_BITS
                if tail and (array[..., -1] >> np.uint64(tail)).any():
                    raise _fail(
                        f"{node.where}: packed weight {key!r} has bits set past channel "
                        f"{channels}; padding bits must be 0 (docs/IR.md)"
                    )
