"""How much a second thread can buy on this machine right now: the benchmarks' contention probe.

The machines here are virtual: each logical core may share its physical core (the vector
units of an SMT pair) or its time with someone else's work, and that changes from minute to
minute. A kernel that keeps the vector pipes busy, as ours do, then gains little from its
second thread, whatever its code does. The probe measures exactly that: two equal tasks of
pure float32 FMA work (no memory traffic, independent chains, 64 lanes each), run on one
thread and then on two; the ratio of the two times is what the second thread buys for
vector-bound work at that moment (2.0 on two unshared cores). The benchmarks run it at the
start and the end of a run and print both, next to their 2-thread numbers.

Measured on the 2-core AMD EPYC (Zen 3) this project benchmarks on, in eight rounds a few
seconds apart: 1.15-1.85x, and the binary conv layers of Bi-Real-18 scaled 0.9-2.4x in the
same rounds (1.8-2.1x in the rounds where the probe gave 1.65x or more).
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange

TASKS = 2
LANES = 64


@njit(cache=True, parallel=True, fastmath=True)
def _fma_tasks(coefficients, repeats):
    """TASKS independent tasks of ``repeats`` x LANES multiply-adds (acc = acc * 0.999 + c)
    each, in parallel; returns one lane of each task (so nothing is optimized away)."""
    out = np.zeros(TASKS, np.float32)
    for task in prange(TASKS):
        acc = np.zeros(LANES, np.float32)
        for _ in range(repeats):
            for lane in range(LANES):
                acc[lane] = acc[lane] * np.float32(0.999) + coefficients[lane]
        out[task] = acc[task]
    return out


def second_thread_gain(repeats: int = 300_000, tries: int = 3) -> float:
    """Time of the two tasks on one thread over their time on two (min of ``tries`` each);
    numba's thread count is restored afterwards."""
    coefficients = np.ones(LANES, np.float32)
    _fma_tasks(coefficients, 10)  # compile (or load from the cache) outside the timing
    before = numba.get_num_threads()
    best = {}
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            times = []
            for _ in range(tries):
                start = time.perf_counter()
                _fma_tasks(coefficients, repeats)
                times.append(time.perf_counter() - start)
            best[threads] = min(times)
    finally:
        numba.set_num_threads(before)
    return best[1] / best[2]


def probe_note(start: float, end: float) -> str:
    """The sentence the result files print about the probe."""
    return (
        f"Second-thread probe (benchmarks/core_probe.py: two equal tasks of pure FMA work, one "
        f"thread against two; 2.0x on two unshared cores): {start:.2f}x at the start of the "
        f"run, {end:.2f}x at the end."
    )
