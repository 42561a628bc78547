"""Model.predict's input checks, threads, and the model's description (inputs, outputs, summary)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from rt_builder import IRBuilder

import runtime
from runtime.threads import blas_threads


@pytest.fixture(scope="module")
def model() -> runtime.Model:
    b = IRBuilder(seed=0)
    x = b.input([3, 5, 4])
    h = b.rprelu(b.affine(b.bconv2d(b.quantize(x), 6)))
    b.output(b.unary("flatten", b.unary("global_avgpool", h)))
    return runtime.load(b.to_bytes())


def good(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, 5, 4)).astype(np.float32)


def nan_input() -> np.ndarray:
    x = good()
    x[1, 2, 3, 0] = np.nan
    return x


def inf_input() -> np.ndarray:
    x = good()
    x[0, 0, 0, 0] = -np.inf
    return x


BAD_INPUTS = {
    "float64": (lambda: good().astype(np.float64), "dtype float64 but the model expects float32"),
    "int": (lambda: good().astype(np.int32), "dtype int32"),
    "nested list": (
        lambda: [good().tolist()],
        "must be a numpy float32 array [N, 3, 5, 4], got list",
    ),
    "rank 3": (lambda: good()[0], "rank 3"),
    "wrong channels": (lambda: np.zeros((2, 4, 5, 4), np.float32), "expects [N, 3, 5, 4]"),
    "wrong spatial": (lambda: np.zeros((2, 3, 4, 5), np.float32), "spatial size is fixed"),
    "empty batch": (lambda: np.zeros((0, 3, 5, 4), np.float32), "empty batch"),
    "non-contiguous": (lambda: good(4)[::2], "not C-contiguous"),
    "nan": (nan_input, "NaN or Inf"),
    "masked nan": (
        lambda: np.ma.masked_invalid(nan_input()),
        "is a masked array; the model has no notion of missing values",
    ),
    "inf": (inf_input, "NaN or Inf"),
    "wrong name": (lambda: {"image": good()}, "missing ['input'], unknown ['image']"),
    "two arrays": (lambda: [good(), good()], "got 2 inputs"),
    "string": (lambda: "x.npy", "got str"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_input_error_naming_the_expectation(model, case):
    make, fragment = BAD_INPUTS[case]
    with pytest.raises(runtime.InputError) as info:
        model.predict(make())
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)  # callers guarding with ValueError still work


def test_accepts_one_array_a_sequence_or_a_mapping(model):
    x = good()
    y = model.predict(x)
    assert y.dtype == np.float32 and y.shape == (2, 6)
    np.testing.assert_array_equal(model.predict([x]), y)
    np.testing.assert_array_equal(model.predict({"input": x}), y)


def test_inputs_and_outputs_describe_the_model(model):
    (spec,) = model.inputs
    assert (spec.name, spec.shape, spec.dtype) == ("input", (None, 3, 5, 4), "float32")
    (out,) = model.outputs
    assert out.shape == (None, 6)


def test_repr_names_inputs_outputs_and_plan_size(model):
    assert repr(model) == (
        "Model(inputs: input[N, 3, 5, 4]; outputs: v5[N, 6]; 4 steps from 6 nodes; threads=None)"
    )


def test_summary_lists_fused_steps_params_and_totals(model):
    text = model.summary()
    lines = text.splitlines()
    assert lines[0].split() == ["#", "op", "name", "output", "params", "bytes"]
    assert "bconv2d+affine+rprelu" in text
    assert "[N, 6, 5, 4]" in text
    # 3 thresholds + 6*3*3*3 binary weights + 2*6 affine + 3*6 rprelu
    assert lines[-1].split() == ["total", f"{3 + 162 + 12 + 18:,}", f"{12 + 432 + 48 + 72:,}"]


def test_threads_apply_during_predict_and_are_restored():
    b = IRBuilder(seed=1)
    b.output(b.affine(b.bconv2d(b.quantize(b.input([2, 3, 3])), 2)))
    before = numba.get_num_threads(), blas_threads()
    assert before[1] is not None, "numpy's OpenBLAS was not found: the BLAS limit is a no-op"
    seen = []
    model = runtime.load(b.to_bytes(), threads=1)
    original = model.plan[-1].run

    def spy(xs):
        seen.append((numba.get_num_threads(), blas_threads()))
        return original(xs)

    model.plan[-1].run = spy
    model.predict(np.zeros((1, 2, 3, 3), np.float32))
    assert seen == [(1, 1)]
    assert (numba.get_num_threads(), blas_threads()) == before
    with pytest.raises(ValueError, match="threads must be an integer from 1"):
        runtime.load(b.to_bytes(), threads=0)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        runtime.load(tmp_path / "nope.bnn")


def test_large_batches_run_in_chunks_with_the_same_result(model) -> None:
    """A batch over runtime.model.CHUNK is cut into chunks; each sample's output is the one it
    gets alone (nothing in the network mixes samples)."""
    from runtime.model import CHUNK

    x = good(2 * CHUNK + 7)
    together = model.predict(x)
    alone = np.concatenate([model.predict(x[i : i + 1]) for i in range(len(x))])
    assert together.shape == (2 * CHUNK + 7, 6)
    np.testing.assert_array_equal(together, alone)


def test_finiteness_check_of_a_big_batch_needs_no_batch_sized_temporary(model) -> None:
    """A 16 MB batch with one NaN in its last sample: the check finds it with temporaries far
    below the 4 MB a whole-batch boolean mask would take (numpy reports its buffers to
    tracemalloc), and before any kernel allocates an activation."""
    import tracemalloc

    x = np.zeros((70_000, 3, 5, 4), np.float32)  # 4.2 M values, 16.8 MB
    x[-1, -1, -1, -1] = np.nan
    tracemalloc.start()
    try:
        with pytest.raises(runtime.InputError, match="NaN or Inf"):
            model.predict(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"the finiteness check allocated {peak:,} bytes at its peak"
