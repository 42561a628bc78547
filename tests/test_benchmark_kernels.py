"""The benchmarks' own kernels compile against the runtime's, and say what the assembly holds.

benchmarks/bench_layers.py wraps private kernel helpers (the "vpopcntdq" pixel-pair loop, the
avx2 4-pixel intrinsics) to count the instructions of their inner loops for its tables; when
a helper's signature changes, only this test notices before a benchmark run fails. It also
checks what the tables report: the avx2 strategy's inner loop is the vpshufb nibble lookup
with no vpopcntq, on any x86-64 host (an AVX-512 one included), since the intrinsics emit
``vpshufb`` themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runtime.clock import is_x86_64
from runtime.kernels.popcount import has_pshufb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.skipif(not (is_x86_64() and has_pshufb()), reason="the avx2 loop needs AVX2")
def test_bench_layers_counts_the_avx2_loop_as_vpshufb_only():
    import bench_layers

    counts = bench_layers.popcount_instruction_counts()
    avx2 = counts["avx2"]
    assert avx2["vpopcntq"] == 0 and avx2["vpsadbw"] == 0
    assert avx2["vpshufb"] == 16 and avx2["vectors"] == 8  # 4 pixels x 2 vectors, 2 each
    assert avx2["vector ALU ops"] == 48  # per vector 2 vpxor + 2 vpshufb + 2 vpaddb
    plain = counts["vpopcntdq"]
    assert plain["vectors"] > 0 and (plain["vpopcntq"] > 0 or plain["vpshufb"] > 0)


def test_second_thread_probe_does_its_work_and_restores_the_thread_count():
    """The probe's tasks really compute their chains (a kernel LLVM could drop would make the
    ratio meaningless), and numba's thread count comes back as it was."""
    import core_probe
    import numba
    import numpy as np

    ones = np.ones(core_probe.LANES, np.float32)
    expected = np.float32(0.0)
    for _ in range(50):
        expected = expected * np.float32(0.999) + np.float32(1.0)
    np.testing.assert_allclose(core_probe._fma_tasks(ones, 50), [expected] * core_probe.TASKS,
                               rtol=1e-5)
    before = numba.get_num_threads()
    gain = core_probe.second_thread_gain(repeats=2_000, tries=1)
    assert numba.get_num_threads() == before
    assert 0.05 < gain < 20
    assert f"{gain:.2f}x at the start" in core_probe.probe_note(gain, 1.0)


def test_results_files_are_replaced_whole(tmp_path):
    """A benchmark's table replaces the old file in one rename and leaves no temporary file."""
    from result_file import write_result

    target = tmp_path / "RESULTS.md"
    target.write_text("old table\n")
    write_result(target, "new table: 5.0x\n")
    assert target.read_text() == "new table: 5.0x\n"
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]
