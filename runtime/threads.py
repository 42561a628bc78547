"""Threads for ``predict``: numba's threading layer, its thread count, and numpy's BLAS.

**Threading layer: TBB.** The binary kernels run in numba ``prange`` loops. Numba's default
layer on Linux pip installs is GNU OpenMP, which is not fork-safe: once a process has run a
parallel loop, a ``fork()``ed child that runs one is killed ("fork() called from a process
already using GNU OpenMP, this is unsafe"), so a ``multiprocessing`` fork ``Pool.map`` of
``predict`` after a ``predict`` in the parent never returns. Numba's TBB layer is both
thread- and fork-safe (numba shuts TBB's workers down before a fork and the child starts new
ones). The ``tbb`` wheel (a runtime dependency) puts ``libtbb.so.12`` in the environment's
``lib/`` folder, outside the loader's search path, so numba cannot find it by itself; importing
the runtime loads it by its full path, after which numba's default search (tbb, omp,
workqueue) picks it. This happens only if nobody chose a layer (``NUMBA_THREADING_LAYER`` or
``numba.config.THREADING_LAYER``) and no parallel loop has run yet in the process; otherwise
the existing choice stands.

Cost, measured on the 2-core (shared, busy) development machine, ``resnet_small`` converted
with the bireal recipe and packed, ms per predict, min of 20 calls, best of 3 processes per
layer (interleaved), the median of the 20 in brackets:

=======================  ===============  ===============  ===============  ===============
model, layer             batch 1, 1 thr   batch 32, 1 thr  batch 1, 2 thr   batch 32, 2 thr
=======================  ===============  ===============  ===============  ===============
1x28x28, omp (before)    0.82 (0.88)      24.4 (25.2)      0.84 (0.96)      25.5 (114)
1x28x28, tbb (after)     0.87 (0.92)      24.8 (30.8)      0.91 (0.99)      22.3 (26.5)
3x64x64, omp (before)    3.30 (3.46)      97.4 (101)       2.43 (11)        185 (276)
3x64x64, tbb (after)     3.63 (3.81)      102 (105)        2.69 (2.78)      61.8 (103)
=======================  ===============  ===============  ===============  ===============

(Timed with ``NUMBA_THREADING_LAYER`` and the library path set by hand, before this module
loaded TBB itself; the runtime now picks ``tbb`` by default, checked.) So TBB costs about
5-10% at batch 1 (its per-loop dispatch is slower than OpenMP's) and is even at batch 32 on
one thread; with 2 threads on a machine whose cores are busy it is far steadier (OpenMP's
spinning workers fight the other processes; its medians reach 100-400 ms). The workqueue
layer, also fork-safe, costs 2.3 ms at batch 1 (2.8x) and is not thread-safe (checked:
concurrent predicts from several Python threads abort the process), so it was not chosen.

Without TBB (a platform without the wheel, or a user who chose ``omp``) the runtime keeps
numba's choice; a ``predict`` in a child forked from a process that had started GNU OpenMP
then raises ``ThreadingLayerError`` (saying what to do) instead of the child being killed.

**Thread counts.** Both pools default to one thread per core, and numba's workers keep
spinning for a while after a parallel loop ends: a BLAS call that follows competes with them
for the cores and runs several times slower (a Bi-Real-18 predict went from ~16 ms to 80-600 ms
on the 2-core machine). So while a model predicts, numba uses the model's thread count and
numpy's BLAS one thread; both are put back afterwards:

- numba's count (``numba.set_num_threads``) is per Python thread in numba (checked: a value
  set in one thread is not seen by another), so each ``predict`` sets and restores its own
  thread's count; concurrent predicts with different ``threads`` do not interfere.
- the BLAS count is one setting for the whole process. The first of any number of concurrent
  predicts saves it and sets 1, the last one to finish restores it (a counter under a lock;
  only that bookkeeping serialises, the predicts themselves run in parallel). While any
  predict runs, other numpy code in the process also gets a single BLAS thread, and a change
  to the BLAS setting made meanwhile is overwritten by the restore.

OpenBLAS is reached through ctypes (the library numpy itself loaded, found in
/proc/self/maps or numpy's bundled ``numpy.libs``); where it cannot be found (another BLAS,
another OS) the BLAS side is left alone. threadpoolctl (which also knows MKL and BLIS) was
tried and not taken: in its version 3.8 the OpenBLAS controller lets only the first Python
thread that set a limit change it again (its "controlling thread") and silently ignores the
others, so a predict in a worker thread could neither set nor restore the count; making its
controller scans the loaded libraries (1.9 ms, so once, not per call) and its ``limit()``
costs 21 us per predict against 4 us for the ctypes calls (measured here). The whole
``thread_limits`` enter + exit, numba's calls included, costs about 21 us per predict with the
counter and lock against 20 us before (min of 5 x 20,000).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import importlib.metadata
import os
import sys
import threading
from collections.abc import Callable, Iterator

import numba
import numpy as np

from runtime.errors import ThreadingLayerError

_TBB_LIBRARY = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}


def _tbb_library_path() -> str | None:
    """Full path of the TBB library the ``tbb`` wheel installed, or None."""
    name = _TBB_LIBRARY.get(sys.platform)
    try:
        files = importlib.metadata.distribution("tbb").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((str(file.locate()) for file in files if file.name == name), None)


def layer_in_use() -> str | None:
    """Numba's threading layer once a parallel loop has run in this process (or its parent)."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel loop has run yet
        return None


def make_tbb_available() -> bool:
    """Load the ``tbb`` wheel's library so numba's default layer search finds it (see top).

    Does nothing if a layer was chosen or already started. Returns whether it loaded TBB.
    """
    if numba.config.THREADING_LAYER != "default" or layer_in_use() is not None:
        return False
    path = _tbb_library_path()
    if path is None:
        return False
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


make_tbb_available()

# -- fork safety ---------------------------------------------------------------------------
_forked_from_gnu_openmp = False


def _check_fork_safety() -> None:
    if _forked_from_gnu_openmp:
        raise ThreadingLayerError(
            "predict cannot run in this process: it was fork()ed from a process that had "
            "already run numba's GNU OpenMP threading layer, which is not fork-safe (the "
            "child would be killed). Install the 'tbb' package (pip install tbb) and leave "
            "NUMBA_THREADING_LAYER unset, or start workers with "
            "multiprocessing.get_context('spawn') or 'forkserver'"
        )


# -- BLAS threads: one process-wide setting, saved by the first of concurrent predicts ----------
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
def _openblas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
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


def blas_threads() -> int | None:
    """numpy's OpenBLAS thread count now (None where OpenBLAS was not found)."""
    blas = _openblas()
    return None if blas is None else blas[1]()


def set_blas_threads(count: int) -> None:
    """Set numpy's OpenBLAS thread count for the process (no-op where it was not found)."""
    blas = _openblas()
    if blas is not None:
        blas[0](count)


_blas_lock = threading.Lock()
_active_predicts = 0
_saved_blas: int | None = None


def _enter_blas() -> None:
    global _active_predicts, _saved_blas
    with _blas_lock:
        if _active_predicts == 0:
            _saved_blas = blas_threads()
            set_blas_threads(1)
        _active_predicts += 1


def _leave_blas() -> None:
    global _active_predicts
    with _blas_lock:
        _active_predicts -= 1
        if _active_predicts == 0:
            _restore_blas()


def _restore_blas() -> None:
    global _saved_blas
    if _saved_blas is not None:
        set_blas_threads(_saved_blas)
    _saved_blas = None


def _after_fork_in_child() -> None:
    """The child has only the forking thread: predicts that were running in other threads
    are gone, so their BLAS limit is undone and the bookkeeping starts afresh."""
    global _blas_lock, _active_predicts, _forked_from_gnu_openmp
    _blas_lock = threading.Lock()
    if _active_predicts:
        _restore_blas()
    _active_predicts = 0
    if sys.platform.startswith("linux") and layer_in_use() == "omp":
        _forked_from_gnu_openmp = True


os.register_at_fork(after_in_child=_after_fork_in_child)


_limits = threading.local()  # .threads: the count of this thread's innermost thread_limits


def kernel_threads() -> int:
    """The numba thread count a kernel call runs with: the innermost ``thread_limits`` of this
    Python thread, else ``numba.get_num_threads()``. Inside a predict this costs an attribute
    read where ``numba.get_num_threads()`` takes a lock and calls into the threading layer
    (a binary conv step's thread-count and split work inside Bi-Real-18's predict, its caches
    cold after the kernel before: 11.4 -> 2.9 us; ``numba.get_num_threads()`` warm: 1.6 us)."""
    threads = getattr(_limits, "threads", None)
    return threads if threads is not None else numba.get_num_threads()


@contextlib.contextmanager
def thread_limits(numba_threads: int | None) -> Iterator[None]:
    """Within the block: this thread's numba count is ``numba_threads`` (None: as it is) and
    the process's BLAS uses 1 thread; both are restored on exit (see the module docstring for
    concurrent use). Raises ``ThreadingLayerError`` in a child forked after GNU OpenMP ran."""
    _check_fork_safety()
    previous_numba = numba.get_num_threads()
    previous_limit = getattr(_limits, "threads", None)
    _enter_blas()
    try:
        if numba_threads is not None:
            numba.set_num_threads(numba_threads)
        _limits.threads = numba_threads if numba_threads is not None else previous_numba
        yield
    finally:
        _limits.threads = previous_limit
        numba.set_num_threads(previous_numba)
        _leave_blas()
