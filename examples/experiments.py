"""What the examples' experiment drivers share (examples/classification, examples/pose).

- ``run_tasks``: run picklable tasks with one function, in this process (``jobs <= 1``) or on
  ``jobs`` spawned processes of one torch thread each, calling back as each one finishes;
- ``write_json``: a result record written atomically (``runtime.atomic.write_atomic``), so an
  interrupted experiment leaves no half file to resume from;
- ``mean_std``: mean and sample standard deviation over seeds;
- ``difference``: the change between two rows in points, its standard error and a verdict;
- ``cpu_model``: the CPU's name for a results table.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

import torch

from runtime.atomic import write_atomic

T = TypeVar("T")
R = TypeVar("R")


def run_tasks(tasks: Sequence[T], jobs: int, run: Callable[[T], R],
              done: Callable[[T, R], None]) -> None:
    """``done(task, run(task))`` for every task, in completion order. With ``jobs > 1`` the
    tasks run on that many spawned processes, each with one torch thread (``run`` must be a
    module-level function and the tasks picklable)."""
    if jobs <= 1:
        for task in tasks:
            done(task, run(task))
        return
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {pool.submit(run, task): task for task in tasks}
        for future in as_completed(futures):
            done(futures[future], future.result())


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON atomically, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: handle.write(json.dumps(value, indent=1).encode()))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation s = sqrt(sum_i (v_i - mean)^2 / (n - 1)); 0 for
    fewer than two values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, str]:
    """mean(b) - mean(a) in points, its standard error sqrt(s_a^2 / n_a + s_b^2 / n_b), and a
    verdict: "helps" / "hurts" when the difference is more than twice its standard error,
    "within noise" otherwise (a rough two-sided test at ~95% for normal seeds)."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    diff = 100 * (mean_b - mean_a)
    se = 100 * math.sqrt(std_a**2 / len(a) + std_b**2 / len(b))
    verdict = "helps" if diff > 2 * se else "hurts" if diff < -2 * se else "within noise"
    return diff, se, verdict


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
