"""The core clock, measured: what MACs per cycle are counted against.

``/proc/cpuinfo``'s "cpu MHz" is what the kernel reports, often the base clock: on the
2-core AMD EPYC (Zen 3) of the benchmarks it says 2445 MHz while the cores run at about
3.06 GHz, so MACs per cycle computed from it came out 25% too high. The measurement here
times a chain of dependent 64-bit multiplies, ``x = x * x``: each waits for the one before,
so it takes exactly one ``imul`` latency, 3 cycles on every x86-64 core since Intel's Nehalem
and AMD's Zen (published latency tables), whatever else the core could do in parallel.

    clock = steps * 3 / seconds

It runs ``tries`` short chains (about 1 ms each, well under a scheduler time slice) and keeps
the fastest, so that time the thread spent descheduled on a loaded machine does not count; a
turbo clock that changes with load is measured as it is while the thread runs. Off x86-64 the
multiply latency differs by core, so ``core_clock`` falls back to /proc/cpuinfo there.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

IMUL_LATENCY_CYCLES = 3  # a dependent 64-bit imul, x86-64 (Nehalem+, Zen+)
CHAIN_STEPS = 300_000  # ~0.3 ms per try at 3 GHz


@njit(cache=True)
def _square_chain(x, steps):
    """x squared ``steps`` times: x * x cannot be reassociated across iterations, so each
    step costs one multiply latency."""
    for _ in range(steps):
        x = x * x
    return x


def fastest_seconds(fn: Callable[..., Any], *args: Any, tries: int) -> float:
    """The shortest of ``tries`` timed calls ``fn(*args)``: time spent descheduled on a loaded
    machine, or anything else that only slows a call down, drops out."""
    best = math.inf
    for _ in range(tries):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def measure_clock_hz(tries: int = 100, steps: int = CHAIN_STEPS) -> float:
    """The clock of the core this thread runs on, in Hz: ``steps * IMUL_LATENCY_CYCLES`` over
    the fastest of ``tries`` timed chains (x86-64 only; see the module docstring)."""
    _square_chain(np.uint64(3), 10)  # compiled (or loaded from the cache) before timing
    best = fastest_seconds(_square_chain, np.uint64(3), steps, tries=tries)
    return steps * IMUL_LATENCY_CYCLES / best


def is_x86_64() -> bool:
    """True on an x86-64 host, where the imul latency above holds."""
    return platform.machine().lower() in ("x86_64", "amd64")


def cpuinfo_clock_hz() -> float | None:
    """The highest "cpu MHz" line of /proc/cpuinfo in Hz (reported, not measured), or None."""
    with contextlib.suppress(OSError, ValueError), open("/proc/cpuinfo") as info:
        mhz = [float(line.split(":")[1]) for line in info if line.startswith("cpu MHz")]
        if mhz:
            return max(mhz) * 1e6
    return None


def core_clock() -> tuple[float | None, str]:
    """(Hz, where it came from): measured by the imul chain on x86-64, else /proc/cpuinfo's
    "cpu MHz", else None."""
    if is_x86_64():
        return measure_clock_hz(), "measured: dependent imul chain"
    hz = cpuinfo_clock_hz()
    if hz is not None:
        return hz, "/proc/cpuinfo cpu MHz, reported"
    return None, "no measurement off x86-64 and no /proc/cpuinfo cpu MHz; pass clock_hz"
