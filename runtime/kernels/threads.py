"""One thread count for every kernel: numba's ``prange`` pool and numpy's BLAS.

The float convolutions and dense layers run their GEMM through numpy's BLAS (OpenBLAS in the
numpy wheels), which keeps its own thread pool sized to the machine. On a small or shared
machine two pools fighting for the same cores cost far more than they give (measured on
2 busy cores: a 784x64 @ 64x128 matmul took 14 ms with OpenBLAS's 2 threads against 0.13 ms
with 1), and a "1 thread" setting should mean one thread everywhere.
"""

from __future__ import annotations

import ctypes
import sys

import numba

# Exported names of openblas_set_num_threads in the builds numpy and distributions ship
# (scipy-openblas wheels prefix and suffix the symbols; the 64-bit-integer build adds "64_").
_OPENBLAS_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux; [] elsewhere)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(path for path in paths if path.startswith("/"))


def set_blas_threads(count: int) -> bool:
    """Set the thread count of the OpenBLAS numpy uses; False when none could be found
    (another BLAS, or not Linux): then set ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``
    before numpy is imported, or use threadpoolctl."""
    done = False
    for path in _loaded_openblas():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter.restype = None
                setter(int(count))
                done = True
                break
    return done


def set_num_threads(count: int) -> None:
    """Use ``count`` threads in every kernel: numba's prange pool and numpy's OpenBLAS.

    ``count`` must lie in 1..numba.config.NUMBA_NUM_THREADS (numba raises ValueError else).
    """
    numba.set_num_threads(count)
    set_blas_threads(count)
