"""passes.export.fold and the bit packing of passes.export.lower, against direct evaluation."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from passes.export import fold, fold_threshold, pack_sign_bits
from runtime.schema import Graph, Node, TensorSpec


def _unpack(words: np.ndarray, channels: int) -> np.ndarray:
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :channels]


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 150)),
        elements=st.floats(-2, 2, width=32),
    )
)
def test_pack_sign_bits_matches_naive(values: np.ndarray) -> None:
    words = pack_sign_bits(values)
    channels = values.shape[-1]
    assert words.dtype == np.uint64
    assert words.shape == (values.shape[0], -(-channels // 64))
    np.testing.assert_array_equal(_unpack(words, channels), (values >= 0).astype(np.uint8))
    # padding bits past the last channel are zero
    assert not _unpack(words, words.shape[-1] * 64)[..., channels:].any()


def test_pack_sign_bits_zero_is_plus_one() -> None:
    words = pack_sign_bits(np.array([[0.0, -0.0, -1e-30, 1e-30]]))
    assert _unpack(words, 4).tolist() == [[1, 1, 0, 1]]


finite = st.floats(-8, 8, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    scale=st.one_of(st.just(0.0), finite),
    bias=finite,
    threshold=finite,
    sign=st.sampled_from([-1.0, 1.0]),
    xs=st.lists(st.integers(-40, 40), min_size=1, max_size=30),
)
def test_fold_threshold_integer_inputs_decide_the_same_bits(
    scale: float, bias: float, threshold: float, sign: float, xs: list[int]
) -> None:
    """For integer inputs (bconv results) the folded integer threshold is exact."""
    folded = fold_threshold(
        np.array([scale]),
        np.array([bias]),
        np.array([threshold]),
        np.array([sign]),
        integer_input=True,
    )
    t, s = folded["threshold"][0], float(folded["sign"][0])
    for x in xs:
        exact = Fraction(scale) * x + Fraction(bias)
        expected = Fraction(sign) * exact >= Fraction(sign) * Fraction(threshold)
        assert (s * x >= s * t) == expected, (x, scale, bias, threshold, sign, t, s)


def _chain_program(scale1, bias1, scale2, bias2, threshold) -> Graph:
    c = len(scale1)
    nodes = [
        Node("bconv2d", "acc", ["x"], ["acc"], {}, {}),
        Node("affine", "a1", ["acc"], ["a1"], {"channels": c}, {"scale": scale1, "bias": bias1}),
        Node("affine", "a2", ["a1"], ["a2"], {"channels": c}, {"scale": scale2, "bias": bias2}),
        Node(
            "quantize",
            "q",
            ["a2"],
            ["q"],
            {"channels": c},
            {"threshold": threshold, "sign": np.ones(c, dtype=np.int8)},
        ),
        Node("bconv2d", "out", ["q"], ["out"], {}, {}),
    ]
    return Graph([TensorSpec("x", (None, c))], [TensorSpec("out", (None, c))], nodes)


def test_fold_merges_affines_into_one_integer_threshold() -> None:
    rng = np.random.default_rng(0)
    c = 7
    s1, b1, s2, b2, t = (rng.normal(size=c) for _ in range(5))
    s2[0] = 0.0  # a dead channel becomes a constant bit
    program = fold(_chain_program(s1, b1, s2, b2, t))
    assert [n.op for n in program.nodes] == ["bconv2d", "quantize", "bconv2d"]
    q = program.nodes[1]
    assert q.inputs == ["acc"]
    thr, sgn = q.params["threshold"], q.params["sign"].astype(float)
    for x in range(-30, 31):
        ref = (x * s1 + b1) * s2 + b2 >= t
        np.testing.assert_array_equal(sgn * x >= sgn * thr, ref)


def test_fold_keeps_an_affine_that_is_read_twice() -> None:
    rng = np.random.default_rng(1)
    c = 3
    program = _chain_program(*(rng.normal(size=c) for _ in range(5)))
    program.nodes.append(Node("add", "sum", ["a2", "a2"], ["sum"]))
    program.outputs.append(TensorSpec("sum", (None, c)))
    fold(program)
    ops = [n.op for n in program.nodes]
    assert ops.count("affine") == 1  # merged a1.a2, but not folded into the quantize
    assert ops.count("quantize") == 1
