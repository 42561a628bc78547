"""The benchmarks' own kernels compile against the runtime's, and say what the assembly holds.

benchmarks/isa.py wraps private kernel helpers (the "vpopcntdq" pixel-pair loop, the avx2
4-pixel intrinsics) to count the instructions of their inner loops for the tables; when
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
def test_isa_counts_the_avx2_loop_as_vpshufb_only():
    import isa

    counts = isa.popcount_instruction_counts()
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


def test_avx2_features_keep_only_what_a_zen3_has_of_the_hosts():
    import isa

    host = ("+64bit,+avx2,+avx512f,+avx512vpopcntdq,-avx512bw,+amx-tile,+avx10.1,+evex512,"
            "+gfni,+popcnt,-sse4a")
    out = isa.avx2_features(host).split(",")
    assert out == ["+64bit", "+avx2", "-avx512f", "-avx512vpopcntdq", "-avx512bw", "-amx-tile",
                   "-avx10.1", "-evex512", "-gfni", "+popcnt", "-sse4a"]


def test_seen_popcount_isa_names_what_the_inner_loop_holds():
    import isa

    counts = {"vpopcntdq": {"vpopcntq": 8, "vpshufb": 0}, "avx2": {"vpopcntq": 0, "vpshufb": 16}}
    assert isa.seen_popcount_isa(counts, "vpopcntdq").startswith("AVX-512 VPOPCNTDQ")
    assert isa.seen_popcount_isa(counts, "avx2").startswith("AVX2 nibble table (vpshufb x16")
    none = {"avx2": {"vpopcntq": 0, "vpshufb": 0}}
    assert isa.seen_popcount_isa(none, "avx2").startswith("neither")


CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import isa
from runtime.kernels.bconv import default_popcount
from runtime.kernels.popcount import target_features
counts = isa.popcount_instruction_counts()
print(json.dumps({"default": default_popcount(), "counts": counts,
                  "avx512": [k for k, on in target_features().items() if on and "avx512" in k]}))
"""


@pytest.mark.skipif(not (is_x86_64() and has_pshufb()), reason="the AVX2 target needs AVX2")
def test_the_avx2_target_compiles_no_avx512_popcount_even_on_an_avx512_host(tmp_path):
    """What bench_runtime's AVX2-target run relies on: a child started with
    ``avx2_target_env`` compiles for a target without AVX-512 (so the default strategy is
    "avx2" and neither strategy's inner loop holds vpopcntq), whatever the host offers."""
    import json
    import os
    import subprocess

    import isa

    benchmarks = Path(isa.__file__).parent
    env = isa.avx2_target_env({**os.environ, "PYTHONPATH": str(benchmarks.parent)},
                              tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", CHILD, str(benchmarks)], env=env,
                         capture_output=True, text=True, check=True, timeout=600)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["avx512"] == []
    assert found["default"] == "avx2"
    assert all(counts["vpopcntq"] == 0 for counts in found["counts"].values())
    assert found["counts"]["avx2"]["vpshufb"] == 16


def test_targets_say_met_or_by_how_much_they_fell_short():
    from targets import Target, targets_table

    assert Target("x", 6.0, 6.2).verdict() == "met"
    assert Target("x", 6.0, 5.4).verdict() == "short by 10%"
    assert Target("x", 1.3, 1.2, higher_is_better=False).verdict() == "met"
    assert Target("x", 1.3, 1.56, higher_is_better=False).verdict() == "short by 20%"
    assert Target("x", 0.8, 0.55, unit="%").verdict() == "short by 25 points"
    assert Target("x", 5.0, 4.997).verdict() == "short by 0.1%"
    rows = targets_table([Target("speed", 6.0, 5.4, lever="fuse"), Target("size", 0.05, 0.01,
                                                                        unit="%",
                                                                        higher_is_better=False,
                                                                        lever="never shown")])
    assert rows[-2] == "| speed | >= 6.000x | 5.400x | short by 10% | fuse |"
    assert rows[-1] == "| size | <= 5% | 1% | met |  |"
    twice = targets_table([Target("a", 2.0, 1.0, lever="fuse"),
                           Target("b", 2.0, 1.0, lever="fuse")])
    assert twice[-2].endswith("| fuse |") and twice[-1].endswith("| as above |")
