"""The benchmarks' contention probe: ``runtime.cores.second_thread_gain`` (what a second
thread buys pure vector work on this machine right now), run at the start and the end of a
run, and the sentence the result files print about it."""

from __future__ import annotations

from runtime.cores import second_thread_gain

__all__ = ["probe_note", "second_thread_gain"]


def probe_note(start: float | None, end: float | None) -> str:
    """The sentence a result file prints about the probe's two values."""
    if start is None or end is None:
        return "Second-thread probe: not run (numba has a single thread here)."
    return (
        f"Second-thread probe (runtime/cores.py: two equal tasks of pure FMA work, one thread "
        f"against two; 2.0x on two unshared cores): {start:.2f}x at the start of the run, "
        f"{end:.2f}x at the end."
    )
