"""channel_slice (ShuffleNet-V2's channel split): against the naive reference, against torch's
slicing, its declaration's checks, and a graph that splits, transforms one half and
concatenates them again (the stride-1 ShuffleNet-V2 unit)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rt_builder import IRBuilder
from rt_reference import run_reference

import runtime
from runtime import registry
from runtime.errors import InvalidModelError
from runtime.ops.shape import channel_slice
from runtime.schema import ValueInfo


def predict_both(b: IRBuilder, batch: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    graph, tensors = b.build()
    spec = graph["inputs"][0]
    x = np.random.default_rng(batch).standard_normal((batch, *spec["shape"][1:]))
    x = x.astype(np.float32)
    expected, _ = run_reference(graph, tensors, {spec["name"]: x})
    got = runtime.load(b.to_bytes()).predict(x)
    return (list(got) if isinstance(got, tuple | list) else [got]), expected


@settings(max_examples=30, deadline=None)
@given(
    channels=st.integers(1, 70),
    spatial=st.sampled_from([[], [1, 1], [3, 2], [4, 5]]),
    data=st.data(),
)
def test_channel_slice_matches_the_reference(channels: int, spatial: list[int], data) -> None:
    start = data.draw(st.integers(0, channels - 1))
    stop = data.draw(st.integers(start + 1, channels))
    b = IRBuilder()
    x = b.input([channels, *spatial])
    b.output(b.node("channel_slice", [x], {"start": start, "stop": stop}))
    (got,), (expected,) = predict_both(b)
    assert got.shape == (3, stop - start, *spatial)
    np.testing.assert_array_equal(got, expected)


def test_channel_slice_equals_torch_slicing_and_copies() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 9, 3, 4)
    nhwc = np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))
    for start, stop in [(0, 4), (4, 9), (2, 3), (0, 9)]:
        got = channel_slice([nhwc], {}, {"start": start, "stop": stop})
        np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), x[:, start:stop].numpy())
        assert got.flags.c_contiguous and not np.shares_memory(got, nhwc)


def test_split_then_concat_is_the_shufflenet_unit() -> None:
    """x -> [x[:, :4], relu(x[:, 4:])] -> concat: the first half passes, the second is
    transformed, and the concat puts them back in channel order."""
    b = IRBuilder()
    x = b.input([8, 3, 3])
    first = b.node("channel_slice", [x], {"start": 0, "stop": 4})
    second = b.unary("relu", b.node("channel_slice", [x], {"start": 4, "stop": 8}))
    b.output(b.concat([first, second]))
    (got,), (expected,) = predict_both(b)
    np.testing.assert_array_equal(got, expected)
    graph, _ = b.build()
    spec = graph["inputs"][0]
    source = np.random.default_rng(0).standard_normal((2, *spec["shape"][1:])).astype(np.float32)
    out = runtime.load(b.to_bytes()).predict(source)
    np.testing.assert_array_equal(out[:, :4], source[:, :4])
    np.testing.assert_array_equal(out[:, 4:], np.maximum(source[:, 4:], 0))


@pytest.mark.parametrize(
    ("attrs", "shape", "message"),
    [
        ({"start": 3, "stop": 3}, (8, 2, 2), "not a non-empty range"),
        ({"start": 5, "stop": 2}, (8, 2, 2), "need start < stop"),
        ({"start": 0, "stop": 9}, (8, 2, 2), "of the input's 8 channels"),
        ({"start": -1, "stop": 2}, (8,), ">= 0"),
        ({"start": 0}, (8,), "missing attr 'stop'"),
    ],
)
def test_bad_slices_are_refused(attrs: dict, shape: tuple, message: str) -> None:
    with pytest.raises(InvalidModelError, match=message):
        registry.get("channel_slice").check("node", attrs, [ValueInfo("float", shape)])
