"""What a second thread can buy on this machine right now: the second-thread probe.

Virtual machines share their cores: a logical core may share its physical core (the vector
units of an SMT pair) or its time with other work, and that changes from minute to minute.
A kernel that keeps the vector pipes busy, as the binary conv does, then gains little from
its second thread, whatever its code does. The probe measures exactly that: two equal tasks
of pure float32 multiply-add work (no memory traffic, 64 independent chains each), on one
thread and then on two; the ratio of the two times is what the second thread buys for
vector-bound work at that moment, 2.0 on two cores of one's own. ``python -m runtime bench``
prints it beside its 2-thread rows, the project's benchmarks at the start and the end of a
run.

Measured on a 2-core AMD EPYC (Zen 3) virtual machine, in eight rounds a few seconds apart:
1.15-1.85x, while Bi-Real-18's binary conv layers scaled 0.9-2.4x in the same rounds
(1.8-2.1x where the probe gave 1.65x or more); a latency-bound integer multiply chain
scaled 1.93x and 1.97x in two runs where the probe gave 1.13x and 1.87x: the cores were
there, their vector units shared.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from runtime.clock import fastest_seconds

TASKS = 2
LANES = 64


@njit(cache=True, parallel=True, fastmath=True)
def _fma_tasks(coefficients, repeats):
    """TASKS independent tasks of ``repeats`` x LANES multiply-adds (acc = acc * 0.999 + c)
    each, in parallel; returns one lane of each task, so that none is optimized away."""
    out = np.zeros(TASKS, np.float32)
    for task in prange(TASKS):
        acc = np.zeros(LANES, np.float32)
        for _ in range(repeats):
            for lane in range(LANES):
                acc[lane] = acc[lane] * np.float32(0.999) + coefficients[lane]
        out[task] = acc[task]
    return out


def second_thread_gain(repeats: int = 300_000, tries: int = 3) -> float | None:
    """Time of the two tasks on one thread over their time on two (min of ``tries`` each,
    ~0.1 s in all at the default size); None where numba has a single thread. Numba's thread
    count is restored afterwards."""
    coefficients = np.ones(LANES, np.float32)
    # compiled (or loaded from the cache) outside the timing, also where it cannot run on two
    # threads: ``python -m runtime warmup`` fills the cache through this call
    _fma_tasks(coefficients, 10)
    if numba.config.NUMBA_NUM_THREADS < 2:
        return None
    before = numba.get_num_threads()
    best = {}
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            best[threads] = fastest_seconds(_fma_tasks, coefficients, repeats, tries=tries)
    finally:
        numba.set_num_threads(before)
    return best[1] / best[2]
