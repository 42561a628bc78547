"""The packed file: a safetensors container whose metadata key ``"binarize"`` holds the graph.

Layout (docs/IR.md): 8 bytes little-endian header length L, L bytes of JSON header (tensor
entries and ``__metadata__``), then the tensor data. Reading is defensive, in this order, so a
hostile or broken file is rejected before big buffers are allocated or anything runs:

1. size sanity: at least 8 bytes, L within the file and under ``MAX_HEADER_BYTES``;
2. the JSON header: UTF-8, an object, no duplicate keys, dtypes among float32/uint64/int8/uint8
   (F32/U64/I8/U8), shapes of non-negative integers, data offsets that match dtype x shape and
   tile the data section exactly (no truncation, no overlap, no trailing bytes);
3. the graph JSON in ``__metadata__["binarize"]`` checked by ``runtime.schema.check_graph``
   against the header's dtypes and shapes (ops, attrs, names, order, shape inference, params);
4. only then the tensor data, read through ``safetensors.numpy``, and content checks
   (``runtime.schema.check_tensor_values``).

Any failure raises ``runtime.InvalidModelError`` saying what and where.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from runtime.atomic import write_atomic
from runtime.errors import InvalidModelError
from runtime.schema import PARAM_DTYPES, Graph
from runtime.validate import check_graph, check_tensor_values

METADATA_KEY = "binarize"
MAX_HEADER_BYTES = 16 << 20
MAX_FILE_BYTES = 8 << 30
_SAFETENSORS_DTYPES = {"F32": "float32", "U64": "uint64", "I8": "int8", "U8": "uint8"}
Source = str | os.PathLike | bytes | bytearray | memoryview


@dataclass
class PackedModel:
    """A checked model: the typed graph and its parameter arrays by tensor key."""

    graph: Graph
    arrays: dict[str, np.ndarray]


def read_model(source: Source) -> PackedModel:
    """Read and fully validate a packed model from a path or from bytes.

    Raises ``InvalidModelError`` for anything that is not a valid binarize model, and
    ``FileNotFoundError``/``OSError`` when a path cannot be read at all.
    """
    data = _read_bytes(source)
    where = repr(os.fspath(source)) if isinstance(source, str | os.PathLike) else "model bytes"
    try:
        header = _parse_header(data)
        graph = check_graph(_graph_json(header), _tensor_header(header))
        try:
            arrays = safetensors.numpy.load(data)
        except Exception as error:  # the container library's own checks, as a last line
            raise InvalidModelError(f"safetensors could not read the tensors: {error}") from error
        check_tensor_values(graph, arrays)
    except InvalidModelError as error:
        raise InvalidModelError(f"{where}: not a valid binarize model: {error}") from error
    return PackedModel(graph, arrays)


def write_model(
    path: str | os.PathLike | None, graph: Mapping[str, Any], tensors: Mapping[str, np.ndarray]
) -> bytes:
    """Check ``graph`` (the docs/IR.md JSON as a dict) with ``tensors`` and serialize them.

    Returns the file's bytes; when ``path`` is given also writes them atomically
    (``runtime.atomic.write_atomic``: a temporary sibling, fsync, then ``os.replace``), so a
    crash mid-write leaves any previous file intact, and the temporary files of killed
    writers are removed on the next write. Raises ``InvalidModelError`` (nothing written)
    when the graph or the tensors break the contract, i.e. exactly when ``runtime.load``
    would refuse the result; the ``OSError`` of a failed write.
    """
    arrays: dict[str, np.ndarray] = {}
    for key, array in tensors.items():
        if not isinstance(array, np.ndarray) or array.dtype.name not in PARAM_DTYPES:
            kind = array.dtype.name if isinstance(array, np.ndarray) else type(array).__name__
            raise InvalidModelError(
                f"tensor {key!r} is {kind}; the packed file holds numpy arrays of "
                f"{sorted(PARAM_DTYPES)} only"
            )
        arrays[key] = np.ascontiguousarray(array)
    try:
        text = json.dumps(graph, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidModelError(f"graph is not JSON-serializable: {error}") from error
    checked = check_graph(json.loads(text), {k: (a.dtype.name, a.shape) for k, a in arrays.items()})
    check_tensor_values(checked, arrays)
    data = safetensors.numpy.save(arrays, metadata={METADATA_KEY: text})
    if path is not None:
        write_atomic(path, lambda handle: handle.write(data))
    return data


def _read_bytes(source: Source) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"expected a path or bytes, got {type(source).__name__}")
    size = os.path.getsize(source)
    if size > MAX_FILE_BYTES:
        raise InvalidModelError(
            f"{os.fspath(source)!r} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit"
        )
    return Path(source).read_bytes()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        keys = [k for k, _ in pairs]
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise InvalidModelError(f"duplicate JSON key {duplicate!r}")
    return result


def _loads(text: bytes | str, what: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        if isinstance(error, InvalidModelError):
            raise InvalidModelError(f"{what}: {error}") from None
        raise InvalidModelError(f"{what} is not valid JSON: {error}") from None


def _parse_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise InvalidModelError(
            f"only {len(data)} bytes: too short for a safetensors file (an 8-byte header "
            "length comes first)"
        )
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES or length > len(data) - 8:
        raise InvalidModelError(
            f"header length field says {length} bytes but the file has {len(data) - 8} after it "
            f"(limit {MAX_HEADER_BYTES}): not a safetensors file, or truncated"
        )
    header = _loads(data[8 : 8 + length], "the safetensors header")
    if not isinstance(header, dict):
        raise InvalidModelError("the safetensors header is not a JSON object")
    data_size = len(data) - 8 - length
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = _tensor_entry(key, entry, data_size)
        spans.append((begin, end, key))
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            raise InvalidModelError(
                f"tensor {key!r} starts at byte {begin} of the data but the previous one ends at "
                f"{position}: overlapping or gapped tensors"
            )
        position = end
    if position != data_size:
        raise InvalidModelError(
            f"tensors cover {position} bytes but the data section has {data_size}: "
            "truncated file or trailing bytes"
        )
    return header


def _tensor_entry(key: str, entry: Any, data_size: int) -> tuple[int, int]:
    """Check one header entry; return its (begin, end) byte span in the data section."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InvalidModelError(
            f"tensor {key!r}: header entry must have exactly dtype, shape and data_offsets"
        )
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise InvalidModelError(
            f"tensor {key!r} has dtype {entry['dtype']!r}; a packed model holds only "
            f"{sorted(_SAFETENSORS_DTYPES)}"
        )
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or len(shape) > 8 or not all(_count(d) for d in shape):
        raise InvalidModelError(f"tensor {key!r} has an invalid shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(d) for d in offsets):
        raise InvalidModelError(f"tensor {key!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if not begin <= end <= data_size or end - begin != nbytes:
        raise InvalidModelError(
            f"tensor {key!r} ({dtype}{shape}) needs {nbytes} bytes but its data_offsets "
            f"{offsets} span {end - begin} of a {data_size}-byte data section: truncated or corrupt"
        )
    return begin, end


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _graph_json(header: dict[str, Any]) -> Any:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise InvalidModelError(
            f"safetensors metadata has no {METADATA_KEY!r} string: a safetensors file, but not a "
            "packed binarize model (write it with binarize.pack)"
        )
    return _loads(metadata[METADATA_KEY], f"metadata {METADATA_KEY!r}")


def _tensor_header(header: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {
        key: (_SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]))
        for key, entry in header.items()
        if key != "__metadata__"
    }
