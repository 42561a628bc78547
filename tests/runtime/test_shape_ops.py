"""The structural ops (adaptive pools, bilinear upsampling, channel shuffle, LayerNorm over
channels) against the naive reference interpreter, and their declarations' checks.
(Their agreement with torch itself is tested in tests/test_spellings_structure.py.)"""

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
from runtime.ops.pooling import adaptive_bins
from runtime.schema import ValueInfo


def predict_both(b: IRBuilder, batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    graph, tensors = b.build()
    spec = graph["inputs"][0]
    x = np.random.default_rng(batch).standard_normal((batch, *spec["shape"][1:]))
    x = x.astype(np.float32)
    (expected,), _ = run_reference(graph, tensors, {spec["name"]: x})
    return runtime.load(b.to_bytes()).predict(x), expected


@settings(max_examples=25, deadline=None)
@given(
    op=st.sampled_from(["adaptive_avgpool2d", "adaptive_maxpool2d"]),
    channels=st.sampled_from([1, 3, 17]),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    out_h=st.integers(1, 10),
    out_w=st.integers(1, 10),
)
def test_adaptive_pools_match_the_reference(op, channels, height, width, out_h, out_w) -> None:
    b = IRBuilder()
    x = b.input([channels, height, width])
    b.output(b.node(op, [x], {"size": [out_h, out_w]}))
    got, expected = predict_both(b)
    assert got.shape == (2, channels, out_h, out_w)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_adaptive_bins_are_pytorchs() -> None:
    # 10 -> 4: [0, 3), [2, 5), [5, 8), [7, 10): neighbouring bins share a pixel
    starts, ends = adaptive_bins(10, 4)
    assert starts.tolist() == [0, 2, 5, 7] and ends.tolist() == [3, 5, 8, 10]
    starts, ends = adaptive_bins(2, 5)  # more outputs than pixels: each pixel repeats
    assert starts.tolist() == [0, 0, 0, 1, 1] and ends.tolist() == [1, 1, 2, 2, 2]


@settings(max_examples=25, deadline=None)
@given(
    channels=st.sampled_from([1, 4, 9]),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    out_h=st.integers(1, 13),
    out_w=st.integers(1, 13),
    align_corners=st.booleans(),
)
def test_bilinear_upsampling_matches_the_reference(
    channels, height, width, out_h, out_w, align_corners
) -> None:
    b = IRBuilder()
    x = b.input([channels, height, width])
    attrs = {"size": [out_h, out_w], "align_corners": align_corners}
    b.output(b.node("upsample_bilinear", [x], attrs))
    got, expected = predict_both(b)
    assert got.shape == (2, channels, out_h, out_w)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bilinear_upsampling_keeps_corners_and_interpolates_linearly() -> None:
    """On a linear ramp, align_corners=True reproduces the ramp exactly at the new grid."""
    b = IRBuilder()
    x = b.input([1, 2, 3])
    b.output(b.node("upsample_bilinear", [x], {"size": [3, 5], "align_corners": True}))
    ramp = np.array([[[[0, 1, 2], [10, 11, 12]]]], np.float32)
    got = runtime.load(b.to_bytes()).predict(ramp)
    expected = np.array([[0, 0.5, 1, 1.5, 2], [5, 5.5, 6, 6.5, 7], [10, 10.5, 11, 11.5, 12]])
    np.testing.assert_allclose(got[0, 0], expected, atol=1e-6)


@pytest.mark.parametrize(("channels", "groups"), [(8, 2), (12, 3), (6, 6), (5, 1)])
def test_channel_shuffle_permutes_channels(channels: int, groups: int) -> None:
    b = IRBuilder()
    x = b.input([channels, 3, 2])
    b.output(b.node("channel_shuffle", [x], {"groups": groups}))
    got, expected = predict_both(b)
    np.testing.assert_array_equal(got, expected)
    source = np.arange(channels, dtype=np.float32).reshape(1, channels, 1, 1)
    b = IRBuilder()
    b.output(b.node("channel_shuffle", [b.input([channels, 1, 1])], {"groups": groups}))
    order = runtime.load(b.to_bytes()).predict(np.ascontiguousarray(source)).reshape(-1)
    per_group = channels // groups
    assert order.tolist() == [(k % groups) * per_group + k // groups for k in range(channels)]


@pytest.mark.parametrize("shape", [[7, 4, 5], [33], [1, 2, 2]])
def test_layernorm_channels_matches_the_reference(shape: list[int]) -> None:
    b = IRBuilder()
    x = b.input(shape)
    c = shape[0]
    params = {"weight": b.f32(c), "bias": b.f32(c)}
    b.output(b.node("layernorm_channels", [x], {"channels": c, "eps": 1e-6}, params))
    got, expected = predict_both(b, batch=3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("op", "attrs", "shape", "message"),
    [
        ("channel_shuffle", {"groups": 3}, (8, 2, 2), "must divide the 8 input channels"),
        ("layernorm_channels", {"channels": 4, "eps": -1.0}, (4, 2, 2), "must be >= 0"),
        ("layernorm_channels", {"channels": 5}, (4, 2, 2), "attr 'channels' is 5"),
        ("adaptive_avgpool2d", {"size": 0}, (4, 2, 2), ">= 1"),
        ("upsample_bilinear", {"size": [2, 2], "align_corners": 1}, (4, 2, 2), "true or false"),
    ],
)
def test_bad_attrs_are_refused(op: str, attrs: dict, shape: tuple, message: str) -> None:
    with pytest.raises(InvalidModelError, match=message):
        registry.get(op).check("node", attrs, [ValueInfo("float", shape)])


def test_the_output_size_comes_from_the_attrs() -> None:
    _, out, _ = registry.get("upsample_bilinear").check(
        "node", {"size": [9, 4]}, [ValueInfo("float", (3, 2, 2))]
    )
    assert out.shape == (3, 9, 4)
    _, out, _ = registry.get("adaptive_maxpool2d").check(
        "node", {"size": 7}, [ValueInfo("float", (3, 20, 20))]
    )
    assert out.shape == (3, 7, 7)
