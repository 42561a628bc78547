"""The second-thread probe (runtime/cores.py): it does the work it times and leaves numba's
thread count as it found it."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from runtime import cores


def test_probe_tasks_compute_their_chains():
    """The tasks really run their multiply-add chains (a kernel LLVM could drop would make the
    ratio meaningless): each returns the float32 recurrence acc = acc * 0.999 + 1."""
    expected = np.float32(0.0)
    for _ in range(50):
        expected = expected * np.float32(0.999) + np.float32(1.0)
    got = cores._fma_tasks(np.ones(cores.LANES, np.float32), 50)
    np.testing.assert_allclose(got, [expected] * cores.TASKS, rtol=1e-5)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_second_thread_gain_is_a_ratio_and_restores_the_thread_count():
    before = numba.get_num_threads()
    gain = cores.second_thread_gain(repeats=2_000, tries=1)
    assert numba.get_num_threads() == before
    assert gain is not None and 0.05 < gain < 20


def test_a_single_thread_has_no_probe(monkeypatch):
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert cores.second_thread_gain() is None
