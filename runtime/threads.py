"""Thread counts for one ``predict`` call: numba's pool and numpy's OpenBLAS.

The binary kernels run in numba ``prange`` loops (the OpenMP threading layer by default); the
float convolutions and dense layers call numpy's BLAS. Both pools default to one thread per
core, and OpenMP workers keep spinning for a while after a parallel loop ends: when a BLAS
call follows, its threads compete with the spinning ones for the same cores and the call
runs several times slower (measured on the 2-core benchmark machine: a whole Bi-Real-18
predict went from ~16 ms to ~80-600 ms). So while a model predicts, numba gets the model's
thread count and OpenBLAS one thread; both are restored afterwards.

OpenBLAS is reached through ctypes (the library numpy itself loaded, found in
/proc/self/maps or numpy's bundled ``numpy.libs``); where it cannot be found (another BLAS,
another OS) the BLAS side is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
from collections.abc import Iterator

import numba
import numpy as np

_SET_NAMES = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GET_NAMES = tuple(name.replace("_set_", "_get_") for name in _SET_NAMES)


def _candidate_libraries() -> list[str]:
    paths: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "openblas" in os.path.basename(path) and path not in paths:
                paths.append(path)
    bundled = os.path.dirname(np.__file__) + ".libs"
    paths.extend(p for p in glob.glob(os.path.join(bundled, "*openblas*")) if p not in paths)
    return paths


@functools.cache
def _openblas() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    """(set_num_threads, get_num_threads) of numpy's OpenBLAS, or None if not found."""
    np.dot(np.ones(2), np.ones(2))  # make sure numpy's BLAS is loaded before looking for it
    for path in _candidate_libraries():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in zip(_SET_NAMES, _GET_NAMES):
            if hasattr(library, set_name) and hasattr(library, get_name):
                setter, getter = getattr(library, set_name), getattr(library, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


@contextlib.contextmanager
def thread_limits(numba_threads: int | None) -> Iterator[None]:
    """Within the block: numba uses ``numba_threads`` (None: leave as is), OpenBLAS 1 thread."""
    previous_numba = numba.get_num_threads()
    blas = _openblas()
    previous_blas = blas[1]() if blas else None
    if numba_threads is not None:
        numba.set_num_threads(numba_threads)
    if blas:
        blas[0](1)
    try:
        yield
    finally:
        numba.set_num_threads(previous_numba)
        if blas:
            blas[0](previous_blas)
