"""The graph's ``version`` must be the integer 1: JSON ``true`` and ``1.0`` compare equal to 1
in Python, and a reader that let them through would accept files no writer produced."""

from __future__ import annotations

import json

import pytest
import safetensors.numpy
from rt_builder import IRBuilder

import runtime


def file_with_version(version: object) -> bytes:
    b = IRBuilder(seed=0)
    b.output(b.affine(b.bconv2d(b.quantize(b.input([2, 3, 3])), 2)))
    graph, tensors = b.build()
    graph["version"] = version
    return safetensors.numpy.save(tensors, metadata={"binarize": json.dumps(graph)})


@pytest.mark.parametrize("version", [True, 1.0, "1"], ids=["true", "1.0", "string"])
def test_version_that_only_equals_one_is_refused(version):
    with pytest.raises(runtime.InvalidModelError, match="graph version must be an integer"):
        runtime.load(file_with_version(version))


def test_version_one_loads_and_other_integers_are_refused():
    assert runtime.load(file_with_version(1)).plan
    with pytest.raises(runtime.InvalidModelError, match="graph version is 2; this runtime reads"):
        runtime.load(file_with_version(2))
