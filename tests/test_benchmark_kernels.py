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
