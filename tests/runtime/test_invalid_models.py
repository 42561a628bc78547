"""Bad packed files raise InvalidModelError saying what and where, before anything runs."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rt_builder import IRBuilder

import runtime
from runtime.format import write_model


def small_model() -> IRBuilder:
    b = IRBuilder(seed=1)
    x = b.input([3, 6, 6])
    h = b.bconv2d(b.quantize(x, signed=True), 4, kernel=3, stride=1, padding=1)
    h = b.unary("flatten", b.pool("maxpool2d", b.affine(h), kernel=2, stride=2))
    b.output(b.dense(h, 5))
    return b


def raw_file(graph: dict, tensors: dict[str, np.ndarray], metadata: str | None = None) -> bytes:
    """A safetensors file written without the runtime's checks (what a hostile writer does)."""
    text = json.dumps(graph) if metadata is None else metadata
    return safetensors.numpy.save(tensors, metadata={"binarize": text})


def mutated(change: Callable[[dict, dict], None]) -> bytes:
    graph, tensors = small_model().build()
    change(graph, tensors)
    return raw_file(graph, tensors)


def node(graph: dict, op: str) -> dict:
    return next(n for n in graph["nodes"] if n["op"] == op)


def set_attr(op: str, key: str, value) -> Callable[[dict, dict], None]:
    def change(graph: dict, tensors: dict) -> None:
        node(graph, op)["attrs"][key] = value

    return change


def swap_first_two_nodes(graph: dict, tensors: dict) -> None:
    graph["nodes"][0], graph["nodes"][1] = graph["nodes"][1], graph["nodes"][0]


def make_cycle(graph: dict, tensors: dict) -> None:
    graph["nodes"][0]["inputs"] = [graph["nodes"][-1]["outputs"][0]]


def wrong_weight_shape(graph: dict, tensors: dict) -> None:
    key = node(graph, "bconv2d")["params"]["weight"]
    tensors[key] = np.zeros((4, 3, 2, 1), np.uint64)


def wrong_dtype(graph: dict, tensors: dict) -> None:
    key = node(graph, "affine")["params"]["scale"]
    tensors[key] = tensors[key].astype(np.float64)


def padding_bits_set(graph: dict, tensors: dict) -> None:
    key = node(graph, "bconv2d")["params"]["weight"]
    tensors[key] = tensors[key] | np.uint64(1 << 63)


def nan_param(graph: dict, tensors: dict) -> None:
    key = node(graph, "dense")["params"]["weight"]
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan


def bad_sign(graph: dict, tensors: dict) -> None:
    key = node(graph, "quantize")["params"]["sign"]
    tensors[key] = np.zeros_like(tensors[key])


def missing_param(graph: dict, tensors: dict) -> None:
    key = node(graph, "affine")["params"].pop("bias")
    del tensors[key]


def extra_tensor(graph: dict, tensors: dict) -> None:
    tensors["stray"] = np.zeros(3, np.float32)


def dangling_param(graph: dict, tensors: dict) -> None:
    node(graph, "affine")["params"]["scale"] = "nowhere"


def duplicate_value(graph: dict, tensors: dict) -> None:
    graph["nodes"][1]["outputs"] = list(graph["nodes"][0]["outputs"])


def dangling_input(graph: dict, tensors: dict) -> None:
    graph["nodes"][2]["inputs"] = ["ghost"]


def unknown_op(graph: dict, tensors: dict) -> None:
    graph["nodes"][2]["op"] = "softmax"


def bits_into_float_op(graph: dict, tensors: dict) -> None:
    graph["nodes"][1]["inputs"] = list(graph["nodes"][0]["inputs"])  # bconv2d reads floats


BAD_GRAPHS = [
    ("wrong format", lambda g, t: g.update(format="onnx"), "format"),
    ("newer version", lambda g, t: g.update(version=2), "version"),
    ("unknown op", unknown_op, "unknown op 'softmax'"),
    ("unknown attr", set_attr("bconv2d", "strides", [1, 1]), "unknown attrs ['strides']"),
    ("zero stride", set_attr("bconv2d", "stride", [0, 1]), "'stride'"),
    ("negative padding", set_attr("bconv2d", "padding", -1), "'padding'"),
    ("kernel larger than padded input", set_attr("bconv2d", "kernel", [9, 9]), "larger than"),
    ("pool padding over half the kernel", set_attr("maxpool2d", "padding", [2, 2]), "half"),
    ("channels mismatch", set_attr("affine", "channels", 5), "'channels' is 5"),
    ("bool as int", set_attr("bconv2d", "out_channels", True), "'out_channels'"),
    ("wrong weight shape", wrong_weight_shape, "has shape [4, 3, 2, 1]"),
    ("wrong dtype", wrong_dtype, "dtype"),
    ("padding bits set", padding_bits_set, "padding bits"),
    ("nan parameter", nan_param, "NaN"),
    ("sign not +-1", bad_sign, "+1 and -1"),
    ("missing param", missing_param, "missing param 'bias'"),
    ("extra tensor", extra_tensor, "no node uses them"),
    ("param names missing tensor", dangling_param, "not in the file"),
    ("duplicate value name", duplicate_value, "already defined"),
    ("dangling input", dangling_input, "'ghost'"),
    ("out of order", swap_first_two_nodes, "earlier node"),
    ("cycle", make_cycle, "earlier node"),
    ("float into a binary op", bits_into_float_op, "must be bits"),
    ("output not produced", lambda g, t: g["outputs"].append({"name": "ghost"}), "'ghost'"),
    ("output shape mismatch", lambda g, t: g["outputs"][0].update(shape=[None, 6]), "declares"),
    ("input without batch null", lambda g, t: g["inputs"][0].update(shape=[1, 3, 6, 6]), "null"),
    ("nodes not a list", lambda g, t: g.update(nodes={}), "'nodes' must be a list"),
    (
        "absurd upsample",
        lambda g, t: g["nodes"].insert(
            3,
            {
                "op": "upsample_nearest",
                "name": "up",
                "inputs": ["v2"],
                "outputs": ["up"],
                "attrs": {"scale": [100000, 100000]},
            },
        ),
        "<= 1024",
    ),
]


@pytest.mark.parametrize(("case", "change", "fragment"), BAD_GRAPHS, ids=[c[0] for c in BAD_GRAPHS])
def test_each_bad_graph_is_named(case, change, fragment):
    with pytest.raises(runtime.InvalidModelError, match="not a valid binarize model") as info:
        runtime.load(mutated(change))
    assert fragment in str(info.value), case


def test_the_writer_refuses_what_the_reader_refuses():
    graph, tensors = small_model().build()
    set_attr("bconv2d", "stride", 0)(graph, tensors)
    with pytest.raises(runtime.InvalidModelError, match="'stride'"):
        write_model(None, graph, tensors)
    with pytest.raises(runtime.InvalidModelError, match="float64"):
        write_model(None, *small_model().build()[:1], {"x": np.zeros(2)})


def header_bytes(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


GOOD = small_model().to_bytes()
BAD_CONTAINERS = [
    ("empty", b"", "too short"),
    ("not safetensors", b"PK\x03\x04 this is a zip file, not a model", "header length"),
    ("huge header length", struct.pack("<Q", 1 << 60) + b"{}", "header length"),
    ("truncated data", GOOD[:-10], "truncated"),
    ("trailing bytes", GOOD + b"\0" * 16, "trailing"),
    ("header not json", struct.pack("<Q", 4) + b"{{{{", "not valid JSON"),
    ("header not utf-8", struct.pack("<Q", 2) + b"\xff\xfe", "not valid JSON"),
    ("header is a list", header_bytes([]), "not a JSON object"),  # type: ignore[arg-type]
    ("no metadata", header_bytes({}), "no 'binarize'"),
    ("metadata not json", header_bytes({"__metadata__": {"binarize": "{nope"}}), "JSON"),
    (
        "float64 tensor",
        header_bytes(
            {
                "__metadata__": {"binarize": "{}"},
                "w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
            },
            b"\0" * 8,
        ),
        "dtype 'F64'",
    ),
    (
        "offsets disagree with shape",
        header_bytes(
            {
                "__metadata__": {"binarize": "{}"},
                "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]},
            },
            b"\0" * 8,
        ),
        "needs 16 bytes",
    ),
    (
        "overlapping tensors",
        header_bytes(
            {
                "__metadata__": {"binarize": "{}"},
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            b"\0" * 6,
        ),
        "overlapping",
    ),
    (
        "negative shape",
        header_bytes(
            {
                "__metadata__": {"binarize": "{}"},
                "a": {"dtype": "U8", "shape": [-4], "data_offsets": [0, 0]},
            }
        ),
        "invalid shape",
    ),
    ("duplicate keys", struct.pack("<Q", 23) + b'{"a": {}, "a": {}}     ', "duplicate JSON key"),
]


@pytest.mark.parametrize(
    ("case", "data", "fragment"), BAD_CONTAINERS, ids=[c[0] for c in BAD_CONTAINERS]
)
def test_each_bad_container_is_named(case, data, fragment):
    with pytest.raises(runtime.InvalidModelError) as info:
        runtime.load(data)
    assert fragment in str(info.value), case


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, len(GOOD))),
)
def test_fuzzed_files_raise_invalid_model_or_load(flips, cut):
    data = bytearray(GOOD)
    for position, mask in flips:
        data[position] ^= mask
    if cut is not None:
        data = data[:cut]
    try:
        model = runtime.load(bytes(data))
    except runtime.InvalidModelError:
        return
    y = model.predict(np.ones((1, 3, 6, 6), np.float32))  # a file that loads must also run
    assert y.shape == (1, 5)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.floats(-4, 4), st.text(max_size=4)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzzed_graph_fields_raise_invalid_model_or_run(data):
    graph, tensors = small_model().build()
    target = data.draw(st.sampled_from(graph["nodes"] + graph["inputs"] + graph["outputs"]))
    fields = target.get("attrs") or target
    key = data.draw(st.sampled_from(sorted(fields)))
    fields[key] = data.draw(JSON_VALUES)
    try:
        model = runtime.load(raw_file(graph, tensors))
    except runtime.InvalidModelError:
        return
    assert model.predict(np.ones((1, 3, 6, 6), np.float32)).shape == (1, 5)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.bnn"
    old = small_model().to_bytes()
    path.write_bytes(old)
    graph, tensors = small_model().build()
    tensors = {k: v.copy() for k, v in tensors.items()}

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("runtime.format.os.fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_model(path, graph, tensors)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.bnn"]  # no temp file left behind


def test_write_returns_the_bytes_it_writes(tmp_path):
    graph, tensors = small_model().build()
    data = write_model(tmp_path / "m.bnn", graph, tensors)
    assert (tmp_path / "m.bnn").read_bytes() == data
    model = runtime.load(tmp_path / "m.bnn")
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), runtime.load(data).predict(x))
