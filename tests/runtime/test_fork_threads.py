"""predict in fork()ed children after the parent predicted, and concurrent predicts from
several Python threads leaving numba's and BLAS's thread counts as they found them."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np
import pytest
from rt_builder import IRBuilder

import runtime
from runtime.threads import blas_threads, kernel_threads, set_blas_threads

HERE = Path(__file__).resolve().parent

FORK_SCRIPT = """
import multiprocessing
import numba
import numpy as np
from rt_builder import IRBuilder
import runtime

b = IRBuilder(seed=3)
x = b.input([64, 6, 6])
h = b.affine(b.bconv2d(b.quantize(x), 64, kernel=3, padding=1))
b.output(b.dense(b.unary("flatten", b.unary("global_avgpool", h)), 5))
model = runtime.load(b.to_bytes(), threads=2)
xs = np.random.default_rng(0).standard_normal((6, 64, 6, 6)).astype(np.float32)

def one(i):
    return model.predict(xs[i : i + 1])

expected = np.concatenate([one(i) for i in range(len(xs))])  # the parent starts the layer

with multiprocessing.get_context("fork").Pool(2) as pool:
    try:
        got = np.concatenate(pool.map(one, range(len(xs))))
    except runtime.ThreadingLayerError as error:
        print("refused:", error)
    else:
        np.testing.assert_array_equal(got, expected)
        print("children agree; layer", numba.threading_layer())
"""


def run_fork_script(layer: str | None) -> subprocess.CompletedProcess[str]:
    """The whole check in a fresh interpreter with a timeout: a child that hangs or is killed
    fails the test instead of hanging the suite."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1])])
    try:
        return subprocess.run(
            [sys.executable, "-c", FORK_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"fork Pool.map of predict hung (layer {layer}): {error.stderr}")


def has_tbb() -> bool:
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not has_tbb(), reason="the tbb wheel is not installed (no wheel here)")
def test_forked_children_predict_after_the_parent_did():
    result = run_fork_script(layer=None)
    assert result.returncode == 0, result.stderr
    assert "children agree; layer tbb" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU OpenMP is Linux's")
def test_children_of_a_gnu_openmp_parent_get_an_error_not_a_kill():
    result = run_fork_script(layer="omp")
    assert result.returncode == 0, result.stderr
    assert "refused: predict cannot run in this process" in result.stdout, result.stderr
    assert "pip install tbb" in result.stdout


def test_concurrent_predicts_restore_every_thread_setting():
    b = IRBuilder(seed=4)
    x = b.input([64, 6, 6])
    h = b.rprelu(b.affine(b.bconv2d(b.quantize(x), 64, kernel=3, padding=1)))
    b.output(b.dense(b.unary("flatten", b.unary("global_avgpool", h)), 7))
    data = b.to_bytes()
    most = min(2, numba.config.NUMBA_NUM_THREADS)
    models = [runtime.load(data, threads=1), runtime.load(data, threads=most)]
    xs = np.random.default_rng(1).standard_normal((3, 64, 6, 6)).astype(np.float32)
    expected = models[0].predict(xs)

    # (model threads, numba's, the kernels' (runtime.threads.kernel_threads), BLAS's) inside
    seen: list[tuple[int, int, int, int | None]] = []
    for model in models:
        original = model.plan[-1].run

        def spy(inputs, model=model, original=original):
            seen.append((model.threads, numba.get_num_threads(), kernel_threads(),
                         blas_threads()))
            time.sleep(0.002)  # let the other threads' predicts start and end meanwhile
            return original(inputs)

        model.plan[-1].run = spy

    workers, calls = 8, 12
    start = threading.Barrier(workers)
    wrong: list[str] = []
    numba_counts: list[tuple[int, int]] = []  # each worker's own count before and after

    def work(k: int) -> None:
        before = numba.get_num_threads()
        start.wait()
        for i in range(calls):
            got = models[(k + i) % 2].predict(xs)
            if not np.array_equal(got, expected):
                wrong.append(f"worker {k}, call {i}")
        numba_counts.append((before, numba.get_num_threads()))

    blas_original = blas_threads()
    assert blas_original is not None, "numpy's OpenBLAS was not found"
    set_blas_threads(2)  # a count predict must change (to 1) and put back
    try:
        blas_before, numba_before = blas_threads(), numba.get_num_threads()
        assert blas_before == 2
        threads = [threading.Thread(target=work, args=(k,)) for k in range(1, workers)]
        for thread in threads:
            thread.start()
        work(0)  # the main thread predicts too
        for thread in threads:
            thread.join()
        blas_after, numba_after = blas_threads(), numba.get_num_threads()
    finally:
        set_blas_threads(blas_original)

    assert not wrong
    assert (blas_after, numba_after) == (blas_before, numba_before)
    assert len(numba_counts) == workers
    assert all(before == after for before, after in numba_counts)
    assert len(seen) == workers * calls
    assert all(inside == kernels == wanted and blas == 1
               for wanted, inside, kernels, blas in seen), seen
    assert kernel_threads() == numba.get_num_threads()  # outside a predict: numba's own
