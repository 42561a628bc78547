"""Fixtures of the pass tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread() -> Iterator[None]:
    """Run the tiny test models on one thread: on a busy machine torch's thread pool makes
    an 8x8 convolution take tens of milliseconds instead of tens of microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
