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


def test_probe_note_reports_both_values_or_that_it_did_not_run():
    import core_probe

    assert "1.50x at the start of the run, 1.20x at the end" in core_probe.probe_note(1.5, 1.2)
    assert "not run" in core_probe.probe_note(None, None)


def test_results_files_are_replaced_whole(tmp_path):
    """A benchmark's table replaces the old file in one rename and leaves no temporary file."""
    from result_file import write_result

    target = tmp_path / "RESULTS.md"
    target.write_text("old table\n")
    write_result(target, "new table: 5.0x\n")
    assert target.read_text() == "new table: 5.0x\n"
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]
