"""Float activations of modern CPU networks and the squeeze-excitation product:
``silu``, ``hardswish``, ``hardsigmoid``, ``sigmoid``, ``gelu`` and ``mul``.

Each follows PyTorch's float32 CPU kernel operation by operation (same formula, same order of
the float32 roundings; only ``exp``, ``tanh`` and ``erf`` themselves may differ from torch's
by an ulp or so):

- ``silu``:        y = x / (1 + exp(-x))                      (= x * sigmoid(x), "Swish")
- ``hardswish``:   y = x * min(max(x + 3, 0), 6) / 6
- ``hardsigmoid``: y = min(max(x + 3, 0), 6) / 6
- ``sigmoid``:     y = 1 / (1 + exp(-x))
- ``gelu``:        approximate "none": y = x * 0.5 * (1 + erf(x / sqrt(2)));
                   approximate "tanh": y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
- ``mul``:         y = a * b, b of a's shape, or for rank-4 values b of shape [C, 1, 1]: one
                   factor per sample and channel, broadcast over the pixels (the gate of a
                   squeeze-excitation block).

``exp(-x)`` overflows to +inf for x below about -88, and x^3 (tanh GELU) or x*6 (hardswish)
for |x| near float32's maximum; the formulas then give what torch gives (sigmoid 0, silu -0,
GELU x or -0, hardswish +-inf), so these overflows are silenced, not warned about.

None of them fits a producer's fused epilogue (``kernels.make_epilogue`` has no such stage),
so they run as their own steps (fusion role None). Every implementation writes into its one
output buffer (no scratch): the numpy ones through ``out=``, exact GELU in a numba loop, since
numpy has no ``erf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from runtime.registry import Attr, Attrs, Fail, Inputs, OpDef, dims, register
from runtime.schema import ValueInfo

_ZERO = np.float32(0.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_THREE = np.float32(3.0)
_SIX = np.float32(6.0)
_SQRT1_2 = np.float32(1.0 / math.sqrt(2.0))  # torch's kAlpha = M_SQRT1_2
_TANH_BETA = np.float32(math.sqrt(2.0 / math.pi))  # torch's kBeta = M_SQRT2 * M_2_SQRTPI / 2
_TANH_KAPPA = np.float32(0.044715)


def _one_plus_exp_minus(x: np.ndarray) -> np.ndarray:
    """A new array 1 + exp(-x) in float32 (+inf where exp overflows)."""
    out = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += _ONE
    return out


def sigmoid(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """y = 1 / (1 + exp(-x))."""
    out = _one_plus_exp_minus(xs[0])
    return np.reciprocal(out, out=out)


def silu(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """y = x / (1 + exp(-x))."""
    out = _one_plus_exp_minus(xs[0])
    return np.divide(xs[0], out, out=out)


def _relu6_of_x_plus_3(x: np.ndarray) -> np.ndarray:
    """A new array min(max(x + 3, 0), 6) in float32."""
    out = np.add(x, _THREE)
    return np.clip(out, _ZERO, _SIX, out=out)


def hardsigmoid(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """y = min(max(x + 3, 0), 6) / 6."""
    out = _relu6_of_x_plus_3(xs[0])
    out /= _SIX
    return out


def hardswish(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """y = x * min(max(x + 3, 0), 6) / 6 (the product first, then the division, as torch)."""
    out = _relu6_of_x_plus_3(xs[0])
    with np.errstate(over="ignore"):  # |x| near float32's maximum: inf, as torch
        out *= xs[0]
    out /= _SIX
    return out


def gelu(xs: Sequence[np.ndarray], p: dict[str, np.ndarray], a: Attrs) -> np.ndarray:
    """GELU, exact (erf) or with torch's tanh approximation (see the module docstring)."""
    x = xs[0]
    if a["approximate"] == "none":
        out = np.empty(x.shape, np.float32)
        _gelu_erf(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
        return out
    with np.errstate(over="ignore"):  # x^3 beyond float32 is +-inf, then tanh gives +-1
        out = np.multiply(x, x)
        out *= x  # x^3 as torch: (x*x)*x
        out *= _TANH_KAPPA
        out += x
        out *= _TANH_BETA
    np.tanh(out, out=out)
    out += _ONE
    # 0.5 * x * (1 + t): multiplying by 0.5 is exact, so (0.5 * (1 + t)) * x rounds the same
    out *= _HALF
    out *= x
    return out


@njit(cache=True, parallel=True)
def _gelu_erf(x, out):  # pragma: no cover - compiled
    """out[i] = x[i] * 0.5 * (1 + erf(x[i] * (1/sqrt 2))) in float32 (numba's erf on float32
    is the C library's erff); x, out contiguous f32[M]."""
    for i in prange(x.shape[0]):
        v = x[i]
        out[i] = v * _HALF * (_ONE + math.erf(v * _SQRT1_2))


for _name, _semantics, _run in (
    ("silu", "y = x / (1 + exp(-x)) = x*sigmoid(x) (SiLU, Swish)", silu),
    ("hardswish", "y = x * min(max(x + 3, 0), 6) / 6", hardswish),
    ("hardsigmoid", "y = min(max(x + 3, 0), 6) / 6", hardsigmoid),
    ("sigmoid", "y = 1 / (1 + exp(-x))", sigmoid),
):
    register(OpDef(_name, _semantics, run=_run))

register(
    OpDef(
        "gelu",
        'y = x/2 * (1 + erf(x/sqrt(2))) ("none"); y = x/2 * (1 + tanh(sqrt(2/pi)*(x + '
        '0.044715*x^3))) ("tanh")',
        attrs=(Attr("approximate", "choice", default="none", choices=("none", "tanh")),),
        run=gelu,
    )
)


def _mul_shape(attrs: Attrs, ins: Sequence[ValueInfo], fail: Fail) -> tuple[int, ...]:
    a, b = ins
    if a.shape == b.shape or (a.rank == 4 and b.shape == (a.channels, 1, 1)):
        return a.shape
    raise fail(
        f"inputs have shapes [N, {dims(a)}] and [N, {dims(b)}]; mul takes a second input of "
        "the first's shape or, for [N, C, H, W], a per-channel gate [N, C, 1, 1]"
    )


register(
    OpDef(
        "mul",
        "elementwise a * b; b has a's shape, or [C, 1, 1] for a [C, H, W] "
        "(per-sample channel gate, squeeze-excitation)",
        inputs=Inputs("float", (2, 4), 2),
        infer=_mul_shape,
        run=lambda xs, p, a: np.multiply(xs[0], xs[1]),
    )
)
