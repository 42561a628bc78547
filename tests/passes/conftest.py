"""Fixtures of the pass tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _pass_tests_run_on_one_torch_thread(one_torch_thread: None) -> None:
    """Every pass test uses the suite's ``one_torch_thread`` (tests/conftest.py)."""
