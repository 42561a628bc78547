"""One named regression test for each failure of the packed-file reliability issue's list.

Each item of the list is tested here (``test_regression_<what>``) or, where a test whose name
says so already exists, there:

- unbounded work / memory, at the op level: ``tests/runtime/test_registry.py::
  test_attrs_beyond_their_bounds_are_refused`` (maxpool kernel 2**40, upsample scale 4096,
  bconv2d stride 2**63) and ``tests/runtime/test_budget.py::
  test_hostile_files_are_refused_before_anything_runs`` (a max-pool sweeping a 4096 window,
  bconv2d stride = padding = 4096, conv2d padding 2000 im2col, upsample 1024x1024); here, whole
  files through ``runtime.load``: :func:`test_regression_unbounded_attrs_are_refused_at_load`
  (avgpool too, and bconv2d stride = padding = 65536);
- integer attrs >= 2**63: ``test_attrs_beyond_their_bounds_are_refused`` and
  :func:`test_regression_integer_attrs_of_2_63_and_more_are_refused_at_load`;
- silent non-finite outputs: 3.4e38 in a BN scale, ``tests/runtime/test_budget.py::
  test_an_overflowing_scale_names_the_step``; negative_slope 1e308,
  ``test_attrs_beyond_their_bounds_are_refused`` (beyond float32); max-pool windows wholly in
  padding, ``tests/runtime/test_budget.py::
  test_a_max_pool_window_wholly_in_the_padding_is_refused_at_load``; here a threshold
  (:func:`test_regression_threshold_of_3_4e38_gives_finite_outputs`) and a dense weight
  (:func:`test_regression_dense_weight_of_3_4e38_is_a_non_finite_error`);
- fork after predict: ``tests/runtime/test_fork_threads.py::
  test_forked_children_predict_after_the_parent_did`` (and
  ``test_children_of_a_gnu_openmp_parent_get_an_error_not_a_kill``);
- concurrent predicts leave BLAS on one thread: ``tests/runtime/test_fork_threads.py::
  test_concurrent_predicts_restore_every_thread_setting``;
- ``np.ma.MaskedArray`` with a masked NaN: ``tests/runtime/test_predict.py::
  test_bad_inputs_raise_input_error_naming_the_expectation[masked nan]``;
- raw exceptions, now library errors (``tests/test_misuse.py`` unless said): pack's wrong-shape
  and meta-device examples, ``test_a_bad_example_input_is_a_conversion_error``; a
  half-precision model, ``test_half_precision_or_meta_weights_are_conversion_errors``; a pack
  path that is missing, a folder or read-only, ``test_unwritable_paths_are_conversion_errors``
  and ``test_a_read_only_folder_is_a_conversion_error``; ``convert(lambda x: x)``,
  ``tests/test_convert.py::test_convert_needs_a_module``; finetune lr=nan / -1, epochs=1.5,
  batch_size=0, ``test_bad_finetune_options_are_training_errors``; a meta model,
  ``test_a_meta_device_model_is_a_training_error``; device="cuda" without CUDA,
  ``test_cuda_without_cuda_is_a_training_error``; a 3 GB predict batch's MemoryError (a
  batch-sized boolean temporary), ``tests/runtime/test_predict.py::
  test_finiteness_check_of_a_big_batch_needs_no_batch_sized_temporary`` (16 MB, measured with
  tracemalloc) and ``tests/runtime/test_budget.py::test_predict_holds_no_more_than_max_memory``;
- an empty validation loader: ``test_empty_validation_data_is_a_training_error``;
- version true / 1.0: ``tests/runtime/test_graph_version.py::
  test_version_that_only_equals_one_is_refused``;
- killed writers' temp files: ``tests/train/test_kill_resume.py::
  test_a_write_removes_dead_writers_temps_and_keeps_live_ones`` (and the kill loops there).

All of them together with the fuzz suite (``tests/runtime/test_fuzz.py``), whose mutations
include each of these files' attrs and values.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy

import runtime
from tests.runtime.rt_builder import IRBuilder


def unchecked(b: IRBuilder, op: str, attrs: dict) -> bytes:
    """The builder's file with the attrs of its ``op`` node replaced, written without the
    writer's checks (what a hostile writer produces)."""
    graph, tensors = b.build()
    next(n for n in graph["nodes"] if n["op"] == op)["attrs"].update(attrs)
    for spec in graph["outputs"]:
        spec.pop("shape")  # optional; the graph's own inference says what the output is
    return safetensors.numpy.save(tensors, metadata={"binarize": json.dumps(graph)})


def pool_file(op: str) -> IRBuilder:
    b = IRBuilder(seed=0)
    b.output(b.pool(op, b.input([2, 8, 8]), kernel=2, stride=2))
    return b


def bconv_file() -> IRBuilder:
    b = IRBuilder(seed=0)
    b.output(b.affine(b.bconv2d(b.quantize(b.input([3, 8, 8])), 4, kernel=1, padding=0)))
    return b


def conv_file() -> IRBuilder:
    b = IRBuilder(seed=0)
    b.output(b.conv2d(b.input([3, 8, 8]), 4, kernel=9, padding=4))
    return b


def upsample_file() -> IRBuilder:
    b = IRBuilder(seed=0)
    b.output(b.upsample(b.input([3, 8, 8]), 2, 2))
    return b


@pytest.mark.parametrize(
    ("make", "op", "attrs", "message"),
    [
        (lambda: pool_file("maxpool2d"), "maxpool2d", {"kernel": 2**40, "padding": 2**39},
         "<= 4096"),
        (lambda: pool_file("avgpool2d"), "avgpool2d", {"kernel": 2**40, "padding": 2**39},
         "<= 4096"),
        # within the attr bounds, but 4097 x 4097 taps for each of the 8 x 8 outputs
        (lambda: pool_file("maxpool2d"), "maxpool2d",
         {"kernel": 4096, "stride": 1, "padding": 2048}, "max_work"),
        (lambda: pool_file("avgpool2d"), "avgpool2d",
         {"kernel": 4096, "stride": 1, "padding": 2048}, "max_work"),
        (bconv_file, "bconv2d", {"stride": 65536, "padding": 65536}, "<= 4096"),
        # a padded copy of 8200 x 8200 pixels
        (bconv_file, "bconv2d", {"stride": 4096, "padding": 4096}, "max_memory"),
        # im2col columns of 4008 x 4008 pixels x 243 taps
        (conv_file, "conv2d", {"padding": 2000}, "max_memory"),
        (upsample_file, "upsample_nearest", {"scale": 4096}, "<= 1024"),
    ],
    ids=["maxpool kernel 2**40", "avgpool kernel 2**40", "maxpool window", "avgpool window",
         "bconv2d stride=padding=65536", "bconv2d stride=padding=4096", "conv2d padding 2000",
         "upsample scale 4096"],
)  # fmt: skip
def test_regression_unbounded_attrs_are_refused_at_load(make, op, attrs, message) -> None:
    data = unchecked(make(), op, attrs)
    with pytest.raises(runtime.InvalidModelError, match=message):
        runtime.load(
            data, max_memory=256 << 20, max_work=10**9 if message == "max_work" else 10**12
        )


@pytest.mark.parametrize("value", [2**63 - 1, 2**63, 2**64, 10**30, -(2**63)])
@pytest.mark.parametrize("attr", ["in_channels", "out_channels", "kernel", "stride", "padding"])
def test_regression_integer_attrs_of_2_63_and_more_are_refused_at_load(attr, value) -> None:
    with pytest.raises(runtime.InvalidModelError, match=f"attr '{attr}' must be an integer"):
        runtime.load(unchecked(bconv_file(), "bconv2d", {attr: value}))


def test_regression_threshold_of_3_4e38_gives_finite_outputs() -> None:
    """A threshold no float32 input reaches is a channel whose bit is always 0: a legal,
    finite model (the kernels compare, they do not subtract)."""
    b = IRBuilder(seed=1)
    x = b.input([3, 6, 6])
    h = b.affine(b.bconv2d(b.quantize(x), 8))
    quantize = b.nodes[0]["name"]
    b.tensors[f"{quantize}.threshold"][:] = np.float32(3.4e38)
    b.output(b.affine(b.bconv2d(b.quantize(h), 4)))  # a fused threshold in the epilogue too
    b.tensors[f"{b.nodes[-3]['name']}.threshold"][0] = np.float32(-3.4e38)
    y = runtime.load(b.to_bytes()).predict(
        np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32) * 1e30
    )
    assert np.isfinite(y).all()


def test_regression_dense_weight_of_3_4e38_is_a_non_finite_error() -> None:
    b = IRBuilder(seed=2)
    x = b.input([6])
    dense = b.dense(x, 4)
    b.tensors[f"{b.nodes[-1]['name']}.weight"][1, :] = np.float32(3.4e38)
    b.output(b.unary("relu", dense))
    model = runtime.load(b.to_bytes())
    ones = np.ones((3, 6), np.float32)
    with pytest.raises(runtime.NonFiniteError, match=r"step 0 \(dense\+relu, nodes 'n0.dense'"):
        model.predict(ones)
    assert np.isfinite(model.predict(np.zeros((3, 6), np.float32))).all()  # 0 * 3.4e38 = 0
