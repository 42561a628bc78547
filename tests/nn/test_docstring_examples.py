"""The examples in the docstrings of operators and binarize.models run and print what they
show."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn

MODULES = [
    "operators",
    "operators.activations",
    "operators.binarizers",
    "operators.channelwise",
    "operators.functional",
    "operators.layers",
    "operators.scaled_products",
    "binarize.models",
    "binarize.models.hourglass",
    "binarize.models.mobilenet",
    "binarize.models.resnet",
    "binarize.models.small",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(
        module,
        extraglobs={"torch": torch, "nn": nn},
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
        report=False,
    )
    assert result.attempted > 0 and result.failed == 0, result
