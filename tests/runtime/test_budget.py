"""runtime.budget: the work and memory a packed file asks for are proved at load time and
bounded; predict never returns Inf/NaN from finite inputs without saying which step made it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import runtime
from runtime.budget import DEFAULT_MAX_MEMORY, MAX_CHUNK
from runtime.format import write_model
from tests.runtime.rt_builder import IRBuilder


def _x(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_work_and_memory_are_the_hand_counted_ones() -> None:
    b = IRBuilder(seed=0)
    x = b.input([3, 8, 8])
    h = b.bconv2d(b.quantize(x), 16, kernel=3, padding=1)  # 8x8 out, 1 word of input
    b.output(b.unary("flatten", b.unary("global_avgpool", b.affine(h))))
    model = runtime.load(b.to_bytes())
    quantize = 3 * 8 * 8  # one visit per input element
    bconv = 16 * 8 * 8 * 9 * 1  # outputs x taps x words
    affine = pool = 16 * 8 * 8
    flatten = 16
    assert model.work_per_sample == quantize + bconv + affine + pool + flatten
    # peak while the fused bconv+affine runs (the input's NHWC copy is released after the
    # quantize): the bits (8*8 words), the float output (4 KiB) and the padded copy of the
    # bits (10 x 10 words)
    assert model.memory_per_sample == 8 * 64 + 4096 + 8 * 100
    assert model.budget.chunk == MAX_CHUNK


@pytest.mark.parametrize(
    ("build", "what"),
    [
        # a max-pool whose kernel sweeps a huge padded window at every output
        (lambda b, x: b.pool("maxpool2d", x, kernel=4096, stride=1, padding=2048), "max_work"),
        # a 1x1 binary conv whose padding makes a 4096-times larger padded copy
        (lambda b, x: b.bconv2d(b.quantize(x), 4, kernel=1, stride=4096, padding=4096),
         "max_memory"),
        # im2col of a float conv with a big padding
        (lambda b, x: b.conv2d(x, 8, kernel=9, padding=2000), "max_memory"),
        # a legal but enormous upsampling
        (lambda b, x: b.upsample(x, 1024, 1024), "max_memory"),
    ],
)  # fmt: skip
def test_hostile_files_are_refused_before_anything_runs(build, what: str) -> None:
    b = IRBuilder(seed=1)
    x = b.input([3, 8, 8])
    b.output(build(b, x))
    data = b.to_bytes()
    limits = {"max_memory": 256 << 20, "max_work": 10**9 if what == "max_work" else 10**12}
    with pytest.raises(runtime.InvalidModelError, match=what):
        runtime.load(data, **limits)


def test_limits_can_be_raised_for_a_trusted_file() -> None:
    b = IRBuilder(seed=2)
    x = b.input([3, 8, 8])
    b.output(b.upsample(x, 16, 16))
    data = b.to_bytes()
    needed = runtime.load(data).memory_per_sample
    with pytest.raises(runtime.InvalidModelError, match="max_memory"):
        runtime.load(data, max_memory=needed - 1)
    assert runtime.load(data, max_memory=needed).budget.chunk == 1
    with pytest.raises(ValueError, match="max_work must be a positive integer"):
        runtime.load(data, max_work=0)


def test_predict_holds_no_more_than_max_memory() -> None:
    b = IRBuilder(seed=3)
    x = b.input([8, 32, 32])
    h = b.conv2d(x, 32, kernel=3, padding=1)
    b.output(b.unary("global_avgpool", b.conv2d(h, 32, kernel=3, padding=1)))
    data = b.to_bytes()
    per_sample = runtime.load(data).memory_per_sample
    model = runtime.load(data, max_memory=5 * per_sample)
    assert model.budget.chunk == 5
    batch = _x(23, 8, 32, 32)
    model.predict(batch[:1])  # compile outside the measurement
    tracemalloc.start()
    try:
        model.predict(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the input batch is the caller's; the outputs are tiny; slack for small temporaries
    assert peak <= 5 * per_sample + 64 * 1024, (peak, per_sample)
    assert 64 * per_sample <= DEFAULT_MAX_MEMORY


def test_an_overflowing_scale_names_the_step() -> None:
    b = IRBuilder(seed=4)
    x = b.input([4, 6, 6])
    h = b.conv2d(x, 4, kernel=3, padding=1)
    affine = b.affine(h)
    b.tensors[f"{b.nodes[-1]['name']}.scale"][:] = np.float32(3.0e38)  # finite, but x*s is not
    b.output(b.unary("relu", affine))
    model = runtime.load(b.to_bytes())
    with pytest.raises(runtime.NonFiniteError, match=r"step 1 \(affine, nodes 'n1.affine'"):
        model.predict(_x(2, 4, 6, 6) * 10)


def test_a_max_pool_window_wholly_in_the_padding_is_refused_at_load() -> None:
    b = IRBuilder(seed=5)
    x = b.input([2, 1, 5])
    b.output(x)
    graph, tensors = b.build()
    # along the height of 1, kernel 2 with dilation 2 and padding 1 reads rows -1 and 1: both
    # outside the input (torch gives -inf there, for every input)
    graph["nodes"].append(
        {
            "op": "maxpool2d",
            "name": "pool",
            "inputs": ["input"],
            "outputs": ["pooled"],
            "attrs": {"kernel": 2, "stride": 1, "padding": 1, "dilation": 2},
        }
    )
    graph["outputs"] = [{"name": "pooled"}]
    with pytest.raises(runtime.InvalidModelError, match="output 0 along height pools no input"):
        write_model(None, graph, tensors)


def test_an_average_pool_window_in_the_padding_counts_it_as_torch_does() -> None:
    b = IRBuilder(seed=5)
    x = b.input([2, 2, 2])
    b.output(b.pool("avgpool2d", x, kernel=3, stride=2, padding=1, ceil_mode=True))
    y = runtime.load(b.to_bytes()).predict(_x(1, 2, 2, 2))
    assert np.isfinite(y).all()


def test_finite_models_are_unaffected() -> None:
    b = IRBuilder(seed=6)
    x = b.input([4, 6, 6])
    b.output(b.affine(b.conv2d(x, 4)))
    y = runtime.load(b.to_bytes()).predict(_x(3, 4, 6, 6))
    assert np.isfinite(y).all()


def test_overflowing_dysign_thresholds_are_an_error_not_constant_bits() -> None:
    b = IRBuilder(seed=7)
    x = b.input([4, 6, 6])
    h = b.dyquantize(x, hidden=3)
    b.tensors[f"{b.nodes[-1]['name']}.fc1_weight"][:] = np.float32(3.0e38)
    b.output(b.affine(b.bconv2d(h, 4)))
    model = runtime.load(b.to_bytes())
    with pytest.raises(runtime.NonFiniteError, match="dyquantize's per-sample thresholds"):
        model.predict(_x(2, 4, 6, 6) * 10)
