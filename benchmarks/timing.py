"""How the benchmarks time one call, written once (standard library only: the peers' worker
imports it in its own venv)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def time_call(fn: Callable[..., Any], *args: Any, warm: int = 0) -> float:
    """Seconds of one call ``fn(*args)``, after ``warm`` untimed calls right before it (so that
    the timed one finds its core awake after a pause)."""
    for _ in range(warm):
        fn(*args)
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start
