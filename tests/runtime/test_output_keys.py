"""Named outputs: a file whose outputs carry keys (a model that returned a dict) predicts a
dict by key; files without keys predict arrays as before; half-keyed files are refused."""

from __future__ import annotations

import numpy as np
import pytest
from rt_builder import IRBuilder

import runtime
from runtime.errors import InvalidModelError
from runtime.format import write_model


def two_outputs(keys: list[str | None]) -> bytes:
    b = IRBuilder()
    x = b.input([3, 4, 4])
    b.output(b.unary("relu", x))
    b.output(b.pool("maxpool2d", x, kernel=2, stride=2))
    graph, tensors = b.build()
    for spec, key in zip(graph["outputs"], keys):
        if key is not None:
            spec["key"] = key
    return write_model(None, graph, tensors)


def test_keyed_outputs_predict_a_dict_by_key() -> None:
    model = runtime.load(two_outputs(["out", "aux"]))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    got = model.predict(x)
    assert isinstance(got, dict) and list(got) == ["out", "aux"]
    np.testing.assert_array_equal(got["out"], np.maximum(x, 0))
    assert got["aux"].shape == (2, 3, 2, 2)
    assert [spec.key for spec in model.outputs] == ["out", "aux"]


def test_outputs_without_keys_predict_a_tuple_as_before() -> None:
    got = runtime.load(two_outputs([None, None])).predict(np.ones((1, 3, 4, 4), np.float32))
    assert isinstance(got, tuple) and len(got) == 2


@pytest.mark.parametrize(
    ("keys", "message"),
    [(["out", None], "for every output or for none"), (["out", "out"], "each key once"),
     (["out", ""], "non-empty string")],
)  # fmt: skip
def test_partial_or_repeated_keys_are_refused(keys: list, message: str) -> None:
    with pytest.raises(InvalidModelError, match=message):
        two_outputs(keys)
