"""The fused runtime against the naive reference interpreter, op by op and on whole graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rt_builder import IRBuilder
from rt_reference import run_reference

import runtime

# Where a quantize reads a value computed with a different float rounding (a float conv, a
# hyper function), inputs this close to a threshold are redrawn: a flipped bit there is rounding.
MARGIN = 1e-3


def run_both(b: IRBuilder, batch: int = 2, margin: float = 0.0):
    """Load the builder's model, predict on a random batch whose quantize decisions all keep
    ``margin`` from their thresholds; returns (runtime outputs as a list, reference outputs,
    the model)."""
    graph, tensors = b.build()
    model = runtime.load(b.to_bytes())
    for seed in range(50):
        rng = np.random.default_rng(seed)
        inputs = {
            spec["name"]: rng.standard_normal((batch, *spec["shape"][1:])).astype(np.float32)
            for spec in graph["inputs"]
        }
        expected, smallest = run_reference(graph, tensors, inputs)
        if smallest >= margin:
            break
    else:
        raise AssertionError("no random input kept the quantize margin; shrink the graph")
    got = model.predict(inputs)
    got = list(got) if isinstance(got, tuple) else [got]
    return got, expected, model


def labels(model: runtime.Model) -> list[str]:
    return [step.label for step in model.plan]


@settings(max_examples=20, deadline=None)
@given(
    channels=st.sampled_from([1, 5, 64, 70]),
    out_channels=st.sampled_from([1, 3, 65]),
    size=st.integers(3, 7),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    pad_value=st.sampled_from([0, 1, -1]),
    signed=st.booleans(),
    batch=st.integers(1, 3),
)
def test_bconv2d_matches_reference_exactly(
    channels, out_channels, size, kernel, stride, padding, pad_value, signed, batch
):
    b = IRBuilder(seed=channels * 7 + size)
    x = b.input([channels, size, size])
    h = b.bconv2d(b.quantize(x, signed=signed), out_channels, kernel, stride, padding, pad_value)
    b.output(b.affine(h))
    (got,), (expected,), model = run_both(b, batch)
    assert got.shape == expected.shape == (batch, out_channels, *expected.shape[2:])
    np.testing.assert_array_equal(got, expected)
    assert labels(model) == ["quantize", "bconv2d+affine"]


def residual_block(b: IRBuilder, x: str, channels: int) -> str:
    """ReActNet/Bi-Real block: quantize -> bconv -> affine -> + x -> rprelu."""
    h = b.affine(b.bconv2d(b.quantize(x), channels, 3, 1, 1))
    return b.rprelu(b.add(h, x))


@settings(max_examples=10, deadline=None)
@given(channels=st.sampled_from([3, 64, 66]), size=st.integers(3, 6), batch=st.integers(1, 2))
def test_residual_blocks_fuse_into_one_kernel_and_match_exactly(channels, size, batch):
    b = IRBuilder(seed=channels + size)
    x = b.input([channels, size, size])
    h = residual_block(b, residual_block(b, x, channels), channels)
    b.output(b.affine(b.bconv2d(b.quantize(h), 4, 3, 2, 1)))
    (got,), (expected,), model = run_both(b, batch)
    np.testing.assert_array_equal(got, expected)
    # block 1's output also feeds block 2's shortcut: its kernel writes the floats and, as a
    # side output, the bits of block 2's quantize; block 2's output feeds only the last
    # quantize, which folds into the kernel's epilogue as its last stage
    assert labels(model) == [
        "quantize",
        "bconv2d+affine+add+rprelu+quantize",
        "bconv2d+affine+add+rprelu+quantize",
        "bconv2d+affine",
    ]
    assert [step.side_output is not None for step in model.plan] == [False, True, False, False]
    # no step overwrites a shortcut: block 1's is the graph input, block 2 stores no floats
    assert [step.overwrites for step in model.plan] == [None, None, None, None]


def test_side_quantize_of_a_block_output_that_is_also_a_graph_output():
    """The float output of a side-quantize step stays a graph output; the bits feed the next
    binary conv."""
    b = IRBuilder(seed=21)
    x = b.input([64, 5, 5])
    h = residual_block(b, x, 64)
    b.output(h)
    b.output(b.affine(b.bconv2d(b.quantize(h), 8, 3, 1, 1)))
    got, expected, model = run_both(b, batch=2)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert labels(model) == ["quantize", "bconv2d+affine+add+rprelu+quantize", "bconv2d+affine"]
    assert model.plan[1].outputs == [h, model.plan[2].inputs[0]]


def test_no_fusion_through_a_value_used_twice_or_an_output():
    b = IRBuilder(seed=3)
    x = b.input([8, 5, 5])
    conv = b.bconv2d(b.quantize(x), 8)
    scaled = b.affine(conv)
    b.output(b.add(scaled, b.prelu(scaled)))  # `scaled` has two consumers
    b.output(conv)  # and `conv` is a graph output
    got, expected, model = run_both(b)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    assert labels(model) == ["quantize", "bconv2d", "affine", "prelu", "add"]


def test_float_conv_path_with_groups_dilation_pools():
    b = IRBuilder(seed=4)
    x = b.input([4, 11, 9])
    h = b.conv2d(x, 6, kernel=3, stride=2, padding=2, dilation=2, groups=2)
    h = b.unary("relu", b.affine(h))
    h = b.pool("maxpool2d", h, kernel=3, stride=2, padding=1, ceil_mode=True)
    h = b.conv2d(h, 5, kernel=1, padding=0, bias=False)
    b.output(
        b.pool(
            "avgpool2d", b.affine(h), kernel=2, stride=2, ceil_mode=True, count_include_pad=False
        )
    )
    (got,), (expected,), model = run_both(b, batch=3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert labels(model)[0] == "conv2d"  # a conv with a bias keeps the affine apart
    assert "conv2d+affine" in labels(model)  # one without absorbs it


def stem_graph(seed: int, *, also_output_the_conv: bool = False, dilation: int = 1,
               groups: int = 1) -> IRBuilder:
    """conv (bias) -> relu -> maxpool 3x3/2, whose output feeds a binary block's quantize
    and its shortcut: a ResNet stem."""
    b = IRBuilder(seed=seed)
    x = b.input([4, 13, 12])
    stem = b.unary("relu", b.conv2d(x, 64, kernel=3, stride=2, padding=1, groups=groups))
    extra = {"dilation": dilation} if dilation != 1 else {}
    pooled = b.pool("maxpool2d", stem, kernel=3, stride=2, padding=1, **extra)
    block = b.affine(b.bconv2d(b.quantize(pooled), 64, 3, 1, 1))
    b.output(b.add(block, pooled))
    if also_output_the_conv:
        b.output(stem)
    return b


def test_a_conv_and_the_max_pool_reading_it_run_as_one_kernel_with_the_same_bits():
    b = stem_graph(8)
    (got,), (expected,), model = run_both(b, batch=2, margin=MARGIN)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert labels(model) == ["conv2d+relu+maxpool2d+quantize", "bconv2d+affine+add"]
    assert model.plan[0].side_output == model.plan[1].inputs[0]
    # the same network with the conv's output also a graph output cannot fuse the pool; its
    # result must be the fused one, bit for bit
    unfused = runtime.load(stem_graph(8, also_output_the_conv=True).to_bytes())
    assert labels(unfused) == ["conv2d+relu", "maxpool2d", "quantize", "bconv2d+affine+add"]
    x = np.random.default_rng(0).standard_normal((3, 4, 13, 12)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), unfused.predict(x)[0])


@pytest.mark.parametrize("blocker", ["dilation", "groups"])
def test_no_pool_fusion_for_a_dilated_pool_or_a_conv_off_the_direct_path(blocker):
    b = stem_graph(9, **{blocker: 2})
    (got,), (expected,), model = run_both(b, batch=2, margin=MARGIN)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert "maxpool2d" in labels(model)


def test_no_pool_fusion_after_a_residual_add():
    b = IRBuilder(seed=10)
    x = b.input([64, 6, 6])
    h = b.add(b.conv2d(x, 64, kernel=3, padding=1), x)
    b.output(b.pool("maxpool2d", h, kernel=2, stride=2))
    (got,), (expected,), model = run_both(b, batch=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert labels(model) == ["conv2d+add", "maxpool2d"]


def test_dense_path_flatten_order_and_shared_prelu():
    b = IRBuilder(seed=5)
    x = b.input([3, 4, 5])
    h = b.unary("flatten", b.conv2d(x, 7, kernel=3, padding=1))
    h = b.prelu(b.affine(b.bdense(b.quantize(h), 70)), shared=True)
    b.output(b.dense(h, 10))
    (got,), (expected,), model = run_both(b, batch=2, margin=MARGIN)
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert "bdense+affine+prelu" in labels(model)


@pytest.mark.parametrize("activation", ["relu", "identity", "sigmoid", "tanh"])
def test_dysign_and_dyprelu(activation):
    b = IRBuilder(seed=6)
    x = b.input([20, 5, 5])
    h = b.bconv2d(b.dyquantize(x, activation=activation), 20)
    h = b.dyprelu(b.affine(h), activation=activation)
    h = b.unary("flatten", b.unary("global_avgpool", h))
    h = b.bdense(b.dyquantize(h, hidden=3, activation=activation), 6)
    b.output(b.dyprelu(h, hidden=2, activation=activation))
    (got,), (expected,), _ = run_both(b, batch=2, margin=MARGIN)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    op=st.sampled_from(["maxpool2d", "avgpool2d"]),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    pad_fraction=st.integers(0, 2),
    ceil_mode=st.booleans(),
    flag=st.booleans(),
)
def test_pools_follow_torch_semantics(op, size, kernel, stride, pad_fraction, ceil_mode, flag):
    padding = min(pad_fraction, kernel // 2)
    assume(min(size) + 2 * padding >= kernel)
    b = IRBuilder(seed=7)
    x = b.input([3, *size])
    extra = (
        {"dilation": 2 if flag and kernel > 1 else 1}
        if op == "maxpool2d"
        else {"count_include_pad": flag}
    )
    if op == "maxpool2d":
        span = extra["dilation"] * (kernel - 1) + 1
        assume(min(size) + 2 * padding >= span and 2 * padding <= span)
    try:
        b.output(b.pool(op, x, kernel, stride, padding, ceil_mode, **extra))
    except runtime.InvalidModelError as error:  # torch would give -inf there: refused instead
        assert "pools no input pixel" in str(error)
        assume(False)
    (got,), (expected,), _ = run_both(b, batch=2)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_concat_upsample_elementwise_and_several_outputs():
    b = IRBuilder(seed=8)
    x = b.input([3, 4, 4])
    y = b.input([2, 4, 4], name="second")
    up = b.upsample(b.unary("clamp", x, min=-0.5, max=None), 2, 3)
    cat_c = b.concat([x, b.unary("leaky_relu", y, negative_slope=0.2), x], axis=1)
    cat_h = b.concat([x, b.unary("relu", x)], axis=2)
    cat_w = b.concat([b.unary("clamp", x, min=None, max=0.1), x], axis=3)
    b.output(up)
    b.output(cat_c)
    b.output(b.add(cat_h, cat_h))
    b.output(cat_w)
    got, expected, model = run_both(b, batch=2)
    assert [o.name for o in model.outputs] == [up, cat_c, b.outputs[2]["name"], cat_w]
    assert [i.name for i in model.inputs] == ["input", "second"]
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.flags.c_contiguous and g.dtype == np.float32
        np.testing.assert_array_equal(g, e)


def test_outputs_are_nchw_and_batch_sizes_vary():
    b = IRBuilder(seed=9)
    x = b.input([70, 3, 2])
    b.output(b.affine(b.bconv2d(b.quantize(x), 9, kernel=1, padding=0)))
    model = runtime.load(b.to_bytes())
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((5, 70, 3, 2)).astype(np.float32)
    whole = model.predict(xs)
    assert whole.shape == (5, 9, 3, 2)
    for i in range(5):
        np.testing.assert_array_equal(
            model.predict(np.ascontiguousarray(xs[i : i + 1])), whole[i : i + 1]
        )
    graph, tensors = b.build()
    np.testing.assert_array_equal(whole, run_reference(graph, tensors, {"input": xs})[0][0])


def test_downsample_shortcut_add_goes_to_the_binary_kernel():
    """Bi-Real downsampling: both the float 1x1 conv's chain and the binary conv's chain end
    in the same add; the binary kernel takes it, the float conv keeps its affine."""
    b = IRBuilder(seed=10)
    x = b.input([64, 6, 6])
    shortcut = b.affine(
        b.conv2d(b.pool("avgpool2d", x, 2, 2), 128, kernel=1, padding=0, bias=False)
    )
    main = b.affine(b.bconv2d(b.quantize(x), 128, kernel=3, stride=2, padding=1))
    b.output(b.rprelu(b.add(shortcut, main)))
    (got,), (expected,), model = run_both(b, batch=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert labels(model) == ["avgpool2d", "conv2d+affine", "quantize", "bconv2d+affine+add+rprelu"]


def test_an_output_overwrites_its_residual_only_where_no_one_else_can_see_it():
    """``_assign_in_place``: the overwrite happens for a shortcut that only this step reads
    and that an earlier kernel made (a binary or a float conv's chain); not for one a later
    step reads too, a graph output, a graph input (the caller's array, at rank 2 used as it
    is), or a float conv's own input."""
    b = IRBuilder(seed=12)
    x = b.input([8, 5, 5])
    first = residual_block(b, x, 8)  # x is the graph input: kept
    second = residual_block(b, first, 8)  # overwrites `first`
    third = residual_block(b, second, 8)  # `second` is read by the concat too: kept
    b.output(b.concat([third, second]))
    fourth = residual_block(b, third, 8)  # `third` as well
    b.output(fourth)
    fifth = residual_block(b, fourth, 8)  # `fourth` is a graph output: kept
    y = b.affine(b.conv2d(fifth, 8, kernel=1, padding=0, bias=False))  # a new array
    z = b.affine(b.conv2d(fifth, 8, kernel=1, padding=0, bias=False))
    w = b.add(y, z)  # y's chain takes the add and overwrites z
    b.output(b.add(b.affine(b.conv2d(w, 8, kernel=1, padding=0, bias=False)), w))  # own input
    got, expected, model = run_both(b, batch=2)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    assert {step.overwrites for step in model.plan} - {None} == {first, z}

    flat = IRBuilder(seed=13)  # rank 2: the caller's array itself is the executor's value
    features = flat.input([70])
    flat.output(flat.add(flat.affine(flat.bdense(flat.quantize(features), 70)), features))
    model = runtime.load(flat.to_bytes())
    given = np.random.default_rng(0).standard_normal((3, 70)).astype(np.float32)
    kept = given.copy()
    model.predict(given)
    np.testing.assert_array_equal(given, kept)
    assert all(step.overwrites is None for step in model.plan)


def test_liveness_releases_every_intermediate_once_after_its_last_reader():
    b = IRBuilder(seed=11)
    x = b.input([8, 4, 4])
    h = residual_block(b, residual_block(b, x, 8), 8)
    b.output(b.concat([h, b.unary("relu", h)]))
    model = runtime.load(b.to_bytes())
    steps = model.plan
    released = [name for step in steps for name in step.release]
    assert len(released) == len(set(released))
    outputs = {spec.name for spec in model.outputs}
    produced = {x} | {name for step in steps for name in step.outputs}
    assert set(released) == produced - outputs
    for i, step in enumerate(steps):
        later_reads = {name for later in steps[i + 1 :] for name in later.inputs}
        assert not set(step.release) & later_reads
        assert set(step.release) <= set(step.inputs)


def test_elementwise_ops_unfused_on_both_ranks():
    """affine, prelu, rprelu, relu, clamp, leaky_relu as standalone numpy steps (after an add,
    which no kernel produces), on NHWC and on [N, F] values, then a signed quantize into
    bdense."""
    b = IRBuilder(seed=12)
    x = b.input([5, 3, 4])
    h = b.rprelu(b.prelu(b.affine(b.add(x, x))))
    h = b.unary(
        "flatten", b.unary("leaky_relu", b.unary("clamp", h, min=-1.0, max=1.5), negative_slope=0.1)
    )
    h = b.rprelu(b.prelu(b.affine(b.add(h, h)), shared=True))
    b.output(b.bdense(b.quantize(b.unary("relu", h), signed=True), 7))
    b.output(h)
    got, expected, model = run_both(b, batch=3)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert "rprelu" in labels(model) and "bdense" in labels(model)
