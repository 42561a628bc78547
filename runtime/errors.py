"""Runtime errors. Every message says what was wrong, where, and what to do about it.

Both classes derive from ``ValueError`` as well, so code that already guards a call with
``except ValueError`` keeps working; new code should catch the specific class.
"""

from __future__ import annotations


class RuntimeModelError(Exception):
    """Base class of every error the packed-model runtime raises on purpose."""


class InvalidModelError(RuntimeModelError, ValueError):
    """A packed file (or bytes) is not a valid binarize model: not a safetensors container,
    a hostile or truncated header, a graph that breaks docs/IR.md, or tensors that do not match
    the graph. Raised by ``runtime.load`` before anything runs or big buffers are allocated, and
    by ``runtime.format.write_model`` before a bad graph reaches the disk."""


class InputError(RuntimeModelError, ValueError):
    """An array given to ``Model.predict`` does not match the model's input spec (type, dtype,
    rank, shape, memory layout, empty batch, or non-finite values)."""


class ThreadingLayerError(RuntimeModelError, RuntimeError):
    """``Model.predict`` cannot run its parallel kernels in this process: it was forked from
    one that had already started numba's GNU OpenMP threading layer (see runtime/threads.py)."""


class NonFiniteError(RuntimeModelError, ArithmeticError):
    """``Model.predict`` computed Inf or NaN from finite inputs: the packed parameters overflow
    float32 on this input (extreme scales, thresholds or weights). The message names the first
    step of the plan that produced a non-finite value."""
