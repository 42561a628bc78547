"""``python -m runtime info|bench|profile|warmup`` in a subprocess: what each verb prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numba
import pytest
from rt_builder import IRBuilder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    b = IRBuilder(seed=5)
    h = b.rprelu(b.affine(b.bconv2d(b.quantize(b.input([3, 6, 6])), 8)))
    b.output(b.dense(b.unary("flatten", b.unary("global_avgpool", h)), 4))
    path = tmp_path_factory.mktemp("cli") / "tiny.bnn"
    path.write_bytes(b.to_bytes())
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
        cwd=ROOT,
    )


def test_info_prints_inputs_outputs_op_counts_sizes_and_the_plan(model_file):
    result = cli("info", str(model_file))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"({model_file.stat().st_size:,} bytes)" in out
    assert "inputs:\n  input [N, 3, 6, 6] float32" in out
    assert "outputs:\n  v6 [N, 4] float32" in out
    assert "ops: 7 nodes in 5 steps" in out
    for op in ("bconv2d: 1", "quantize: 1", "rprelu: 1", "dense: 1", "global_avgpool: 1"):
        assert f"  {op}\n" in out
    assert "parameters: " in out and "plan:" in out and "bconv2d+affine+rprelu" in out


def test_bench_prints_a_latency_row_per_threads_and_batch(model_file):
    result = cli("bench", str(model_file), "--batch", "1", "4", "--threads", "1", "--repeats", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "threads", "batch", "min", "ms", "median", "ms", "min", "ms/sample", "samples/s",
    ]  # fmt: skip
    assert [line.split()[:2] for line in lines[2:4]] == [["1", "1"], ["1", "4"]]
    best, median = (float(v) for v in lines[2].split()[2:4])
    assert 0 < best <= median
    assert "min and median of 3 calls after one warm-up; numba layer:" in lines[4]


def test_bench_with_two_threads_prints_the_second_thread_probe(model_file):
    result = cli("bench", str(model_file), "--threads", "1", "2", "--repeats", "2")
    assert result.returncode == 0, result.stderr
    probe = [line for line in result.stdout.splitlines() if "second-thread probe" in line]
    if numba.config.NUMBA_NUM_THREADS < 2:
        assert probe == []
        return
    assert len(probe) == 1
    before, after = (float(v) for v in re.findall(r"([0-9]+\.[0-9]+)x", probe[0])[:2])
    assert 0.05 < before < 20 and 0.05 < after < 20


def test_profile_prints_the_per_step_table(model_file):
    result = cli("profile", str(model_file), "--batch", "2", "--threads", "1", "--repeats", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0].split()[:5] == ["#", "op", "name", "ms", "share"]
    assert "bconv2d+affine+rprelu" in out and "total" in out
    assert "batch 2, 1 thread(s), min of 2 repeats" in out
    assert f"{2 * 6 * 6 * 8 * 9 * 3:,}" in out  # the bconv2d's binary MACs


def test_bad_file_and_bad_options_exit_2_with_a_message(tmp_path, model_file):
    missing = cli("info", str(tmp_path / "missing.bnn"))
    assert missing.returncode == 2 and "No such file" in missing.stderr
    garbage = tmp_path / "garbage.bnn"
    garbage.write_bytes(b"not a model")
    invalid = cli("bench", str(garbage))
    assert invalid.returncode == 2 and "python -m runtime bench:" in invalid.stderr
    zero = cli("bench", str(model_file), "--batch", "0")
    assert zero.returncode == 2 and "expected a positive integer, got '0'" in zero.stderr


NEXT_PROCESS = """
import sys, time
start = time.perf_counter()
import runtime
from runtime.warmup import sample_inputs
model = runtime.load(sys.argv[1])
model.predict(sample_inputs(model, 1))
elapsed = time.perf_counter() - start
from runtime.warmup import kernels
print(elapsed, sum(len(k.stats.cache_misses) for k in kernels().values()))
"""


def _kernel_rows(out: str) -> dict[str, tuple[int, int]]:
    """kernel name -> (compiled, from cache) from the warmup table."""
    rows = [line.split() for line in out.splitlines()[1:] if line.startswith("runtime.")]
    return {name: (int(compiled), int(loaded)) for name, compiled, loaded in rows}


def test_warmup_fills_a_fresh_numba_cache_so_the_next_process_compiles_nothing(
    tmp_path, model_file
):
    """A fresh cache: warm up one model (its kernels compile), then everything (the rest
    compile, the model's load), then a new process predicts without compiling anything.

    Measured here (2 shared cores): Bi-Real-18's first predict in an empty cache took 35-60 s
    (almost all numba compiling, the binary conv kernel alone 15 s); after the warm-up, a new
    process's import + load + first predict took 0.6 s."""
    from runtime.warmup import kernels

    cache = tmp_path / "numba"
    env = {"NUMBA_CACHE_DIR": str(cache)}
    first = cli("warmup", str(model_file), env=env)
    assert first.returncode == 0, first.stderr
    used = _kernel_rows(first.stdout)
    assert "runtime.kernels.bconv._bconv_kernel" in used  # the model's binary conv
    assert all(compiled >= 1 and loaded == 0 for compiled, loaded in used.values())
    assert "1 model(s) in" in first.stdout and f"numba cache: {cache}" in first.stdout

    everything = cli("warmup", env=env)
    assert everything.returncode == 0, everything.stderr
    ready = _kernel_rows(everything.stdout)
    names = set(kernels())
    assert set(ready) == names  # every kernel of the runtime, and nothing else
    assert all(ready[name] == (0, used[name][0]) for name in used)  # loaded, not recompiled
    assert all(ready[name][0] >= 1 for name in names - set(used))
    assert f"{len(names)} of {len(names)} kernels ready" in everything.stdout
    for name in names:  # numba's index file of each kernel: <module>.<function>-<line>.py*.nbi
        module, function = name.rsplit(".", 1)
        pattern = f"{module.rsplit('.', 1)[1]}.{function}-*.nbi"
        assert list(cache.rglob(pattern)), f"no cache index {pattern} under {cache}"

    after = subprocess.run(
        [sys.executable, "-c", NEXT_PROCESS, str(model_file)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(cache)),
    )  # fmt: skip
    assert after.returncode == 0, after.stderr
    _seconds, compiled = after.stdout.split()
    # nothing compiled in the new process: the exact check (times belong in benchmarks; the
    # README states the measured cold and warm first-predict times)
    assert int(compiled) == 0
