"""Structure-aware mutations of real packed files, for the fuzz suite (tests/runtime/test_fuzz.py).

A packed file is decoded into the parts a writer controls: the graph JSON, the tensors (key
-> array), the safetensors header (its ``[key, entry]`` pairs, so keys can be duplicated),
the header's JSON text and the file's bytes. One to three mutations, each from a family of
:data:`FAMILIES`, edit the part they target; the file is then re-encoded *without* any of the
writer's checks, which is what a hostile or broken writer produces:

- ``attrs``: integer attrs to huge, negative, 2**63, float, bool, string or list values,
  plausible neighbours (+-1, doubled, the declared bounds and one past them), pairs with one
  bad half, the other choices of a choice attr and look-alikes of another type (0 / 0.0 /
  false / "0"), missing and unknown attrs;
- ``shapes``: the input and output specs (dims, rank, batch, dtype) and the params' shapes,
  as the header states them (consistent with the data, or not);
- ``names``: dangling inputs, cycles, self-loops, duplicate node and value names, nodes
  swapped, dropped or repeated, inputs rewired to other values, params pointing elsewhere;
- ``offsets``: data_offsets that overlap, run past the end, are reversed, swapped, not
  integers;
- ``dtypes``: header dtype codes swapped (the data left as it was), or the data reinterpreted
  as another dtype with a header that agrees;
- ``metadata``: unknown or look-alike versions (true, 1.0) and formats, deep nesting, huge
  strings, duplicate keys at every level, a graph that is not an object, broken UTF-8;
- ``tensors``: NaN, Inf, 3.4e38 in scales, thresholds and weights, padding bits set in
  packed weights, signs that are not +-1;
- ``bytes``: truncation, byte flips, digit swaps inside the header, a wrong header length,
  trailing bytes.

``mutate(base, seed, case)`` is a pure function of its arguments: the same numbers give the
same bytes on any machine, so a failing case is rebuilt from (base, seed, case) alone.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.registry import Attr, all_ops

CODES = {
    "float32": "F32", "uint64": "U64", "int8": "I8", "uint8": "U8", "float64": "F64",
    "float16": "F16", "int64": "I64", "int32": "I32", "uint32": "U32", "bool": "BOOL",
}  # fmt: skip
DTYPES = {code: np.dtype(name) for name, code in CODES.items()}

HUGE_INTS = (
    2**31 - 1, 2**31, 2**32, 2**40, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30,
    -1, -2, -2**31, -2**63, -2**63 - 1, 0, 65536, 4096, 4097, 2000, 1 << 20, (1 << 20) + 1,
)  # fmt: skip
ODD_VALUES = (
    1.5, 1.0, 0.0, -0.0, 2.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf"),
    True, False, None, "3", "", "relu", [], {}, [1], [1, 2, 3], [[2, 2]], [True, 1],
    [1.0, 2.0], [2**63, 1], [1, -1], [None, None], {"h": 1, "w": 1}, 3.4e38,
)  # fmt: skip
NUMBERS = (
    1e308, -1e308, 3.4e38, -3.4e38, 3.5e38, 3.4028235e38, 1e38, 1e30, -1e30, 1e-45, 0.0,
    -0.0, 0.5, -1.0, 100.0, float("nan"), float("inf"), float("-inf"), True, "0.1", None, [1],
)  # fmt: skip
SPECIALS = np.array(
    [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 3.4028235e38, 1e30, -1e30, 1e-45, 0.0, -0.0, 1e20],
    np.float32,
)


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


@dataclass
class Draft:
    """A packed file taken apart. Mutators edit ``graph`` and ``tensors`` in place (arrays are
    replaced, never written into: they may be views of the base) or queue edits of the later
    stages; :meth:`encode` applies them in order: graph -> header pairs -> header text ->
    bytes. ``raw`` holds JSON text that ``json`` cannot produce (deep nesting, duplicate
    keys); a placeholder string stands for it until the text is assembled."""

    graph: Any
    tensors: dict[str, np.ndarray]
    rng: np.random.Generator
    graph_text: str | None = None
    raw: dict[str, str] = field(default_factory=dict)
    header_edits: list[Callable[[list[list[Any]]], None]] = field(default_factory=list)
    text_edits: list[Callable[[bytes], bytes]] = field(default_factory=list)
    byte_edits: list[Callable[[bytes], bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raw_value(self, text: str) -> str:
        """A placeholder that :meth:`encode` replaces by the JSON ``text``."""
        marker = f"\x00raw{len(self.raw)}\x00"
        self.raw[marker] = text
        return marker

    def substitute(self, text: str) -> str:
        for marker, value in self.raw.items():
            text = text.replace(json.dumps(marker), value)
        return text

    def encode(self) -> bytes:
        graph_text = self.graph_text
        if graph_text is None:
            graph_text = self.substitute(json.dumps(self.graph))
        pairs: list[list[Any]] = [["__metadata__", {"binarize": graph_text}]]
        chunks, offset = [], 0
        for key, array in self.tensors.items():
            data = np.ascontiguousarray(array).tobytes()
            entry = {
                "dtype": CODES[array.dtype.name],
                "shape": list(array.shape),
                "data_offsets": [offset, offset + len(data)],
            }
            pairs.append([key, entry])
            chunks.append(data)
            offset += len(data)
        for edit in self.header_edits:
            edit(pairs)
        text = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
        header = self.substitute(text).encode("utf-8", "surrogatepass")
        for text_edit in self.text_edits:
            header = text_edit(header)
        blob = struct.pack("<Q", len(header)) + header + b"".join(chunks)
        for byte_edit in self.byte_edits:
            blob = byte_edit(blob)
        return blob


def decode(data: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """The graph JSON text and the tensors (read-only views) of a well-formed packed file."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = memoryview(data)[8 + length :]
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        array = np.frombuffer(body[begin:end], DTYPES[entry["dtype"]])
        tensors[key] = array.reshape(entry["shape"])
    return header["__metadata__"]["binarize"], tensors


# ------------------------------------------------------------------------------- helpers
def _nodes(d: Draft) -> list[dict[str, Any]]:
    nodes = d.graph.get("nodes") if isinstance(d.graph, dict) else None
    return [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []


def _specs(d: Draft, key: str) -> list[dict[str, Any]]:
    specs = d.graph.get(key) if isinstance(d.graph, dict) else None
    return [s for s in specs if isinstance(s, dict)] if isinstance(specs, list) else []


def _value_names(d: Draft) -> list[str]:
    names = [s.get("name") for s in _specs(d, "inputs")]
    for node in _nodes(d):
        names += _list(node, "outputs")
    return [n for n in names if isinstance(n, str)]


def _list(node: dict[str, Any], key: str) -> list[Any]:
    value = node.get(key)
    return value if isinstance(value, list) else []


def _near(rng: np.random.Generator, value: Any, attr: Attr | None) -> Any:
    """A plausible neighbour of an integer: often valid, sometimes just past a bound."""
    v = value if isinstance(value, int) and not isinstance(value, bool) else 1
    options = [v + 1, v - 1, 2 * v, v // 2, 0, 1, 2, 3, int(rng.integers(1, 10))]
    if attr is not None:
        options += [attr.minimum, attr.maximum, attr.maximum + 1, attr.minimum - 1]
    return pick(rng, options)


def _hostile(rng: np.random.Generator) -> Any:
    return pick(rng, HUGE_INTS) if rng.random() < 0.6 else pick(rng, ODD_VALUES)


def attr_value(rng: np.random.Generator, attr: Attr | None, current: Any) -> Any:
    """A new value for ``attr`` (None: an attr this op does not declare)."""
    kind = attr.kind if attr is not None else "int"
    if kind == "int":
        return _near(rng, current, attr) if rng.random() < 0.5 else _hostile(rng)
    if kind == "pair":
        halves = list(current) if isinstance(current, list) and len(current) == 2 else [1, 1]
        roll = rng.random()
        if roll < 0.4:
            return [_near(rng, halves[0], attr), _near(rng, halves[1], attr)]
        if roll < 0.55:
            return _near(rng, halves[0], attr)  # the one-integer spelling
        if roll < 0.8:
            halves[int(rng.integers(2))] = _hostile(rng)
            return halves
        return _hostile(rng)
    if kind == "choice":
        if rng.random() < 0.5:
            return pick(rng, attr.choices)
        look_alikes = [0, 0.0, False, "0", 1, 1.0, True, "1", -1, -1.0, "relu ", "RELU", None]
        return pick(rng, look_alikes)
    if kind == "flag":
        return pick(rng, [True, False, 0, 1, "true", None, 1.0, []])
    if kind == "bound" and rng.random() < 0.2:
        return None
    return pick(rng, NUMBERS)


# --------------------------------------------------------------------------------- attrs
def mutate_attrs(d: Draft) -> None:
    nodes = _nodes(d)
    if not nodes:
        return mutate_bytes(d)
    node = pick(d.rng, nodes)
    op = node.get("op")
    definition = all_ops().get(op) if isinstance(op, str) else None
    declared = {a.name: a for a in definition.attrs} if definition else {}
    if not isinstance(node.get("attrs"), dict):
        node["attrs"] = {}
    attrs = node["attrs"]
    roll = d.rng.random()
    if roll < 0.1 and attrs:
        key = pick(d.rng, sorted(attrs))
        del attrs[key]
        d.notes.append(f"attrs: {node.get('name')}.{key} removed")
        return None
    if roll < 0.15:
        key = pick(d.rng, ["strides", "kernel_size", "", "groups ", "scale_factor"])
        attrs[key] = 1
        d.notes.append(f"attrs: {node.get('name')}.{key!r} added")
        return None
    names = sorted(set(declared) | set(attrs)) or ["channels"]  # an op without attrs gets one
    # attrs that no param shape pins (stride, padding, pad_value, flags...) are drawn three
    # times as often: their valid neighbours give files that load and run
    pinned = [declared.get(n) is not None and declared[n].kind == "int" for n in names]
    weights = np.array([1.0 if p else 3.0 for p in pinned])
    key = names[int(d.rng.choice(len(names), p=weights / weights.sum()))]
    value = attr_value(d.rng, declared.get(key), attrs.get(key))
    attrs[key] = value
    d.notes.append(f"attrs: {node.get('name')}.{key} = {_short(value)}")
    return None


# -------------------------------------------------------------------------------- shapes
def _dim(rng: np.random.Generator, value: Any) -> Any:
    return _near(rng, value, None) if rng.random() < 0.6 else _hostile(rng)


def mutate_shapes(d: Draft) -> None:
    roll = d.rng.random()
    specs = _specs(d, "inputs") if roll < 0.45 else _specs(d, "outputs")
    if roll >= 0.7 or not specs:
        return _mutate_param_shape(d)
    spec = pick(d.rng, specs)
    shape = spec.get("shape")
    what = d.rng.integers(6)
    if what <= 2 and isinstance(shape, list) and len(shape) > 1:
        i = int(d.rng.integers(1, len(shape)))
        shape[i] = _dim(d.rng, shape[i])
    elif what == 3 and isinstance(shape, list):
        spec["shape"] = pick(d.rng, [shape[:-1], [*shape, 1], [None, 12], [1, *shape[1:]],
                                     [0, *shape[1:]], ["N", *shape[1:]]])  # fmt: skip
    elif what == 4:
        spec["shape"] = pick(d.rng, [None, "x", [], [None], {}, 3])
    else:
        key = pick(d.rng, ["dtype", "key", "name"])
        spec[key] = pick(d.rng, ["float16", "uint8", None, 7, "", "out", "input"])
    d.notes.append(f"shapes: {spec.get('name')} -> {_short(spec)}")
    return None


def _mutate_param_shape(d: Draft) -> None:
    if not d.tensors:
        return mutate_bytes(d)
    key = pick(d.rng, sorted(d.tensors))
    array = d.tensors[key]
    what = d.rng.integers(5)
    if what == 0 and array.ndim > 1:
        new = array.reshape(-1)
    elif what <= 1:
        new = array.reshape(1, *array.shape)
    elif what == 2 and array.ndim >= 2:
        new = array.reshape(array.shape[0] * array.shape[1], *array.shape[2:])
    elif what == 3 and array.size:
        new = np.concatenate([array, array[:1]]) if array.ndim else array.reshape(1)
    else:  # the header says another shape than the data holds
        shape = [_dim(d.rng, s) for s in array.shape] or [2]

        def edit(pairs: list[list[Any]], key: str = key, shape: list[Any] = shape) -> None:
            for pair in pairs:
                if pair[0] == key:
                    pair[1]["shape"] = shape

        d.header_edits.append(edit)
        d.notes.append(f"shapes: header shape of {key} -> {_short(shape)}")
        return None
    d.tensors[key] = new
    d.notes.append(f"shapes: {key} {list(array.shape)} -> {list(new.shape)}")
    return None


# --------------------------------------------------------------------------------- names
def mutate_names(d: Draft) -> None:
    nodes = _nodes(d)
    graph = d.graph
    if not nodes or not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        return mutate_bytes(d)
    rng = d.rng
    i = int(rng.integers(len(nodes)))
    node = nodes[i]
    names = _value_names(d) or ["input"]
    what = int(rng.integers(12))
    inputs = _list(node, "inputs")
    if what == 0 and inputs:  # dangling
        inputs[int(rng.integers(len(inputs)))] = pick(rng, ["ghost", "", "v-1", "input "])
    elif what == 1 and inputs:  # a later value: a cycle, or the node's own output
        later = [n for m in nodes[i:] for n in _list(m, "outputs") if isinstance(n, str)]
        inputs[int(rng.integers(len(inputs)))] = pick(rng, later or ["ghost"])
    elif what == 2 and inputs:  # any value: a valid rewiring, or a kind/shape mismatch
        inputs[int(rng.integers(len(inputs)))] = pick(rng, names)
    elif what == 3:  # duplicate output value name
        node["outputs"] = [pick(rng, names)]
    elif what == 4:  # duplicate node name
        node["name"] = pick(rng, nodes).get("name")
    elif what == 5 and len(nodes) > 1:  # out of order
        j = int(rng.integers(len(nodes)))
        graph["nodes"][i], graph["nodes"][j] = graph["nodes"][j], graph["nodes"][i]
    elif what == 6:  # dropped: its consumers dangle unless nothing read it
        graph["nodes"].remove(node)
    elif what == 7:  # repeated, as it is or under a fresh name (then valid and unused)
        copy = json.loads(json.dumps(node))
        if rng.random() < 0.5:
            copy["name"], copy["outputs"] = f"{node.get('name')}~", [f"{i}~"]
        graph["nodes"].insert(i + 1, copy)
    elif what == 8 and isinstance(node.get("params"), dict):  # a param pointing elsewhere
        params = node["params"]
        role = pick(rng, sorted(params) or ["weight"])
        params[role] = pick(rng, [*sorted(d.tensors), "ghost", None, 3])
        if rng.random() < 0.3:
            params.pop(role, None)
    elif what == 9:  # the outputs list
        outputs = graph.get("outputs")
        if isinstance(outputs, list):
            choice = rng.integers(4)
            if choice == 0:
                outputs.append({"name": pick(rng, names)})
            elif choice == 1 and outputs:
                outputs.pop()
            elif choice == 2 and outputs:
                outputs.append(json.loads(json.dumps(outputs[0])))
            else:
                graph["outputs"] = [{"name": n, "key": pick(rng, ["a", "a", "b"])} for n in
                                    names[-2:]]  # fmt: skip
    elif what == 10:  # names of the wrong type
        key = pick(rng, ["name", "op", "inputs", "outputs"])
        node[key] = pick(rng, ["", 7, None, ["a"], [], [7], {"a": 1}, True])
    else:  # a graph input renamed or repeated
        specs = _specs(d, "inputs")
        if specs:
            spec = pick(rng, specs)
            if rng.random() < 0.5:
                spec["name"] = pick(rng, [*names, "", "x"])
            else:
                graph["inputs"].append(json.loads(json.dumps(spec)))
    d.notes.append(f"names: kind {what} at node {i} {node.get('name')!r}")
    return None


# ------------------------------------------------------------------------------- offsets
def mutate_offsets(d: Draft) -> None:
    if not d.tensors:
        return mutate_bytes(d)
    key = pick(d.rng, sorted(d.tensors))
    other = pick(d.rng, sorted(d.tensors))
    what = int(d.rng.integers(12))
    k = pick(d.rng, [1, 4, 8, 64, 2**32, 2**63, 2**64])

    def edit(pairs: list[list[Any]]) -> None:
        entries = {p[0]: p[1] for p in pairs if p[0] != "__metadata__" and _entry(p[1])}
        if key not in entries or other not in entries:  # an earlier edit took it apart
            return
        entry = entries[key]
        begin, end = entry["data_offsets"]
        new: Any
        if what == 0:
            new = [begin, end + k]
        elif what == 1:
            new = [begin - k, end]
        elif what == 2:
            new = [begin + k, end + k]
        elif what == 3:
            new = [end, begin]
        elif what == 4:
            new = [begin, begin]
        elif what == 5:
            new = [0, end - begin]
        elif what == 6:  # swapped with another tensor: of the same size, a valid container
            new = entries[other]["data_offsets"]
            entries[other]["data_offsets"] = [begin, end]
        elif what == 7:
            new = [float(begin), float(end)]
        elif what == 8:
            new = pick(d.rng, [[begin], [begin, end, end], None, "0", [str(begin), end]])
        elif what == 9:
            new = [-1, end]
        elif what == 10:  # removed from the header: a gap, a dangling param
            pairs[:] = [p for p in pairs if p[0] != key]
            return
        else:
            new = [begin, 2**64 + end]
        entry["data_offsets"] = new

    d.header_edits.append(edit)
    d.notes.append(f"offsets: kind {what} on {key} (k={k}, other {other})")
    return None


# -------------------------------------------------------------------------------- dtypes
def mutate_dtypes(d: Draft) -> None:
    if not d.tensors:
        return mutate_bytes(d)
    key = pick(d.rng, sorted(d.tensors))
    array = d.tensors[key]
    if d.rng.random() < 0.5:  # the code only: the data stays as it was
        code = pick(d.rng, ["F32", "U64", "I8", "U8", "F64", "F16", "BF16", "I32", "U32",
                            "I64", "BOOL", "f32", "", None, 7])  # fmt: skip

        def edit(pairs: list[list[Any]]) -> None:
            for pair in pairs:
                if pair[0] == key:
                    pair[1]["dtype"] = code

        d.header_edits.append(edit)
        d.notes.append(f"dtypes: header dtype of {key} -> {code!r}")
        return None
    target = pick(d.rng, ["float32", "uint64", "int8", "uint8", "float64", "float16", "int64"])
    raw = np.ascontiguousarray(array)
    itemsize = np.dtype(target).itemsize
    if raw.ndim and (raw.shape[-1] * raw.itemsize) % itemsize == 0 and rng_bool(d, 0.6):
        new = raw.view(target)  # the same bytes read as another dtype
    else:
        with np.errstate(all="ignore"):
            new = raw.astype(target)
    d.tensors[key] = new
    before, after = f"{array.dtype}{list(array.shape)}", f"{new.dtype}{list(new.shape)}"
    d.notes.append(f"dtypes: {key} {before} -> {after}")
    return None


def rng_bool(d: Draft, p: float) -> bool:
    return bool(d.rng.random() < p)


# ------------------------------------------------------------------------------ metadata
def _deep(rng: np.random.Generator) -> str:
    depth = int(pick(rng, [50, 500, 5000, 100_000]))
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    return '{"a": ' * depth + "1" + "}" * depth


def _duplicate_keys(value: dict[str, Any], rng: np.random.Generator) -> str:
    """The JSON text of ``value`` with one of its keys given twice (same or another value)."""
    pairs = list(value.items())
    key, item = pick(rng, pairs) if pairs else ("a", 1)
    second = item if rng.random() < 0.5 else pick(rng, [2, "onnx", None, [], {}])
    pairs.insert(int(rng.integers(len(pairs) + 1)), (key, second))
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


def mutate_metadata(d: Draft) -> None:
    rng = d.rng
    graph = d.graph if isinstance(d.graph, dict) else {}
    what = int(rng.integers(13))
    nodes = _nodes(d)
    if what == 0:
        graph["version"] = pick(rng, [True, 1.0, 2, 0, -1, "1", None, 2**63, [1], 1e300, False])
    elif what == 1:
        graph["format"] = pick(rng, ["onnx", "", None, 1, "binarize.packed\x00",
                                     "BINARIZE.PACKED", "binarize.packed "])  # fmt: skip
    elif what == 2:
        if graph and rng.random() < 0.5:
            del graph[pick(rng, sorted(graph))]
        else:
            graph[pick(rng, ["extra", "Version", "nodes ", ""])] = 1
    elif what == 3 and graph:
        graph[pick(rng, ["inputs", "outputs", "nodes"])] = pick(rng, [{}, None, "x", [], [[]],
                                                                     [None], 0])  # fmt: skip
    elif what == 4:  # deep nesting somewhere in the graph
        deep = d.raw_value(_deep(rng))
        if nodes and rng.random() < 0.7:
            node = pick(rng, nodes)
            place = pick(rng, ["attrs", "inputs", "params", "name"])
            if place == "attrs" and isinstance(node.get("attrs"), dict) and node["attrs"]:
                node["attrs"][pick(rng, sorted(node["attrs"]))] = deep
            else:
                node[place] = deep
        else:
            graph["extra"] = deep
    elif what == 5:  # a huge string: a name (renamed everywhere, so the graph stays valid),
        # an op, or a header that is over the limit
        length = int(pick(rng, [10**4, 10**5, 10**6, 4 * 10**6]))
        if rng.random() < 0.04:
            length = 17 * 2**20
        text = "x" * length
        if nodes and rng.random() < 0.6:
            node = pick(rng, nodes)
            old = node.get("outputs", [None])[0] if isinstance(node.get("outputs"), list) else None
            if isinstance(old, str) and rng.random() < 0.5:
                _rename_value(d, old, text)
            else:
                node[pick(rng, ["name", "op"])] = text
        else:
            graph["format"] = text
    elif what == 6 and graph:  # duplicate keys in the graph, a node or its attrs
        if nodes and rng.random() < 0.6:
            node = pick(rng, nodes)
            if isinstance(node.get("attrs"), dict) and rng.random() < 0.5:
                node["attrs"] = d.raw_value(_duplicate_keys(node["attrs"], rng))
            else:
                position = next(i for i, n in enumerate(graph["nodes"]) if n is node)
                graph["nodes"][position] = d.raw_value(_duplicate_keys(node, rng))
        else:
            d.graph_text = d.substitute(_duplicate_keys(graph, rng))
    elif what == 7:  # a graph that is not an object, or not JSON
        text = d.substitute(json.dumps(d.graph))
        d.graph_text = pick(rng, ["[]", "1", "null", '"x"', "", "{", text + " trailing",
                                  "\ufeff" + text, text[: len(text) // 2], "NaN"])  # fmt: skip
    elif what == 8:  # the metadata entry itself
        choice = int(rng.integers(5))

        def edit(pairs: list[list[Any]]) -> None:
            pair = _metadata(pairs)
            if pair is None:
                return
            meta = pair[1]
            if choice == 0:
                meta["binarize"] = pick(rng, [d.graph, 1, None, []])
            elif choice == 1:
                meta.pop("binarize", None)
            elif choice == 2:
                pair[1] = pick(rng, [[], "x", None, 1])
            elif choice == 3:
                meta["format"] = "pt"  # another metadata key: allowed
            else:
                pairs.remove(pair)

        d.header_edits.append(edit)
    elif what == 9:  # duplicate keys in the header: a tensor entry, __metadata__, binarize
        choice = int(rng.integers(3))

        def duplicate(pairs: list[list[Any]]) -> None:
            if choice == 0 and len(pairs) > 1:
                pairs.insert(int(rng.integers(len(pairs) + 1)), list(pick(rng, pairs[1:])))
            elif choice == 1:
                pairs.append(["__metadata__", {"binarize": "{}"}])
            elif (pair := _metadata(pairs)) is not None:
                text = json.dumps(pair[1].get("binarize"))
                pair[1] = d.raw_value("{" + f'"binarize": {text}, "binarize": {text}' + "}")

        d.header_edits.append(duplicate)
    elif what == 10:  # the header text: broken UTF-8, a BOM, garbage after the object
        choice = int(rng.integers(5))

        def text_edit(header: bytes) -> bytes:
            if choice == 0:
                i = int(rng.integers(len(header)))
                return header[:i] + b"\xff" + header[i + 1 :]
            if choice == 1:
                return b"\xef\xbb\xbf" + header
            if choice == 2:
                return header + b"xyz"
            if choice == 3:
                return header + b" " * int(rng.integers(1, 9))  # padding: valid
            return header.replace(b"binarize", b"binar\x00ze", 1)

        d.text_edits.append(text_edit)
    elif what == 11:  # deep nesting in the header, outside the metadata
        deep = d.raw_value(_deep(rng))
        d.header_edits.append(lambda pairs: pairs.append(["deep", deep]))
    else:  # NaN literals where numbers are
        if nodes:
            node = pick(rng, nodes)
            if isinstance(node.get("attrs"), dict):
                node["attrs"][pick(rng, sorted(node["attrs"]) or ["min"])] = float("nan")
    d.notes.append(f"metadata: kind {what}")
    return None


def _metadata(pairs: list[list[Any]]) -> list[Any] | None:
    """The header's ``__metadata__`` pair if it is still there and still an object."""
    return next((p for p in pairs if p[0] == "__metadata__" and isinstance(p[1], dict)), None)


def _entry(value: Any) -> bool:
    """Whether a header value is still a tensor entry with a [begin, end] pair of integers."""
    offsets = value.get("data_offsets") if isinstance(value, dict) else None
    return isinstance(offsets, list) and len(offsets) == 2 and all(
        isinstance(o, int) for o in offsets
    )


def _rename_value(d: Draft, old: str, new: str) -> None:
    for node in _nodes(d):
        for key in ("inputs", "outputs"):
            if isinstance(node.get(key), list):
                node[key] = [new if n == old else n for n in node[key]]
    for spec in _specs(d, "outputs"):
        if spec.get("name") == old:
            spec["name"] = new


# ------------------------------------------------------------------------------- tensors
ROLE_WEIGHT = {"scale": 4, "threshold": 4, "weight": 3, "bias": 2, "gamma": 2, "beta": 2}


def mutate_tensors(d: Draft) -> None:
    if not d.tensors:
        return mutate_bytes(d)
    rng = d.rng
    keys = sorted(d.tensors)
    weights = np.array([ROLE_WEIGHT.get(k.rsplit(".", 1)[-1], 1) for k in keys], float)
    key = keys[int(rng.choice(len(keys), p=weights / weights.sum()))]
    array = np.array(d.tensors[key])  # a writable copy
    flat = array.reshape(-1)
    if flat.size == 0:
        return mutate_bytes(d)
    count = int(pick(rng, [1, 1, 2, max(1, flat.size // 4), flat.size]))
    where = rng.choice(flat.size, size=min(count, flat.size), replace=False)
    if array.dtype == np.float32:
        if rng.random() < 0.15:
            with np.errstate(over="ignore", under="ignore"):
                flat *= np.float32(pick(rng, [1e30, -1e30, 1e-30, 1e37]))
            what = "scaled"
        else:
            value = pick(rng, SPECIALS)
            flat[where] = value
            what = f"{count} x {value}"
    elif array.dtype == np.uint64:
        bit = np.uint64(int(rng.integers(64)))
        if rng.random() < 0.5:
            flat[where] |= np.uint64(1) << np.uint64(63)  # the top bit: padding unless C % 64 == 0
            what = "bit 63 set"
        else:
            flat[where] ^= np.uint64(1) << bit  # a weight flipped (or a padding bit set)
            what = f"bit {bit} flipped"
        if rng.random() < 0.2:
            flat[:] = np.uint64(2**64 - 1)
            what = "all ones"
    else:
        value = pick(rng, [0, 2, -128, 127, -1, 1] if array.dtype == np.int8 else [0, 2, 255])
        flat[where] = value
        what = f"{count} x {value}"
    d.tensors[key] = array
    d.notes.append(f"tensors: {key} {what}")
    return None


# --------------------------------------------------------------------------------- bytes
def mutate_bytes(d: Draft) -> None:
    rng = d.rng
    what = int(rng.integers(7))
    seed = int(rng.integers(2**32))

    def edit(blob: bytes) -> bytes:
        local = np.random.default_rng(seed)
        (length,) = struct.unpack("<Q", blob[:8]) if len(blob) >= 8 else (0,)
        data = bytearray(blob)
        if not data:  # an earlier edit cut it all
            return blob
        if what == 0:  # truncated anywhere
            return bytes(data[: int(local.integers(len(data) + 1))])
        if what == 1:  # truncated at a boundary
            cut = pick(local, [0, 4, 7, 8, 9, 8 + length - 1, 8 + length, len(data) - 1])
            return bytes(data[: max(0, cut)])
        if what == 2:  # random bytes flipped
            for _ in range(int(local.integers(1, 9))):
                data[int(local.integers(len(data)))] ^= int(local.integers(1, 256))
            return bytes(data)
        if what == 3 and length:  # a digit of the header changed: new numbers, valid JSON
            digits = [i for i in range(8, min(8 + length, len(data))) if 48 <= data[i] <= 57]
            for i in local.choice(digits, size=min(len(digits), 2), replace=False):
                data[int(i)] = int(local.integers(48, 58))
            return bytes(data)
        if what == 4:  # the header length field
            new = pick(local, [length + 1, length - 1, length + 8, 0, 2**63, 2**64 - 1, len(data)])
            return struct.pack("<Q", min(max(0, new), 2**64 - 1)) + bytes(data[8:])
        if what == 5:  # trailing bytes
            return bytes(data) + bytes(int(local.integers(1, 64)))
        if len(data) > 8 + length:  # a flip inside the tensor data
            data[int(local.integers(8 + length, len(data)))] ^= int(local.integers(1, 256))
        return bytes(data)

    d.byte_edits.append(edit)
    d.notes.append(f"bytes: kind {what}")
    return None


FAMILIES: dict[str, tuple[float, Callable[[Draft], None]]] = {
    "attrs": (20, mutate_attrs),
    "shapes": (12, mutate_shapes),
    "names": (14, mutate_names),
    "offsets": (8, mutate_offsets),
    "dtypes": (8, mutate_dtypes),
    "metadata": (14, mutate_metadata),
    "tensors": (14, mutate_tensors),
    "bytes": (10, mutate_bytes),
}


def mutate(base: tuple[str, dict[str, np.ndarray]], seed: int, case: int) -> tuple[bytes, Draft]:
    """The bytes of fuzz case ``case`` of run ``seed`` on ``base`` (``decode``'s result), and
    the draft (its ``notes`` say what was done)."""
    rng = np.random.default_rng([seed, case])
    graph_text, tensors = base
    d = Draft(json.loads(graph_text), dict(tensors), rng)
    names = list(FAMILIES)
    weights = np.array([FAMILIES[n][0] for n in names])
    count = int(rng.choice([1, 2, 3], p=[0.65, 0.25, 0.10]))
    for _ in range(count):
        FAMILIES[names[int(rng.choice(len(names), p=weights / weights.sum()))]][1](d)
    return d.encode(), d


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
