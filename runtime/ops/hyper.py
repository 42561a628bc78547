"""DyBNN's per-sample hyper function, shared by ``dyquantize`` and ``dyprelu``.

    h[n] = FC2(act(FC1(GAP(x[n])))),   GAP = mean over the pixels (the identity at rank 2)

with act one of ``relu`` (the default), ``identity``, ``sigmoid``, ``tanh``. ``dyquantize``
reads one head (the thresholds alpha[n, c]); ``dyprelu`` two (gamma then zeta).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from runtime.ops.common import channels_attr
from runtime.registry import MAX_CHANNELS, Attr, Attrs, Param
from runtime.schema import ValueInfo

ACTIVATIONS = ("relu", "identity", "sigmoid", "tanh")
_CODES = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}


def hyper_attrs() -> tuple[Attr, ...]:
    return (
        channels_attr(),
        Attr("hidden", "int", minimum=1, maximum=MAX_CHANNELS),
        Attr("activation", "choice", default="relu", choices=ACTIVATIONS),
    )


def hyper_params(heads: int) -> tuple[Param, ...]:
    """fc1_weight [Hd, C], fc1_bias [Hd], fc2_weight [heads*C, Hd], fc2_bias [heads*C]."""

    def rule(make):
        return lambda attrs, ins: (make(attrs["channels"], attrs["hidden"]),)

    rows = f"{heads}C" if heads > 1 else "C"
    return (
        Param("fc1_weight", "float32", rule(lambda c, h: (h, c)), doc="[Hd, C]"),
        Param("fc1_bias", "float32", rule(lambda c, h: (h,)), doc="[Hd]"),
        Param("fc2_weight", "float32", rule(lambda c, h: (heads * c, h)), doc=f"[{rows}, Hd]"),
        Param("fc2_bias", "float32", rule(lambda c, h: (heads * c,)), doc=f"[{rows}]"),
    )


def hyper_work(attrs: Attrs, ins: Sequence[ValueInfo], heads: int) -> int:
    """Pixels averaged plus the two small matrix products."""
    c, h = attrs["channels"], attrs["hidden"]
    pixels = 1
    for size in ins[0].shape[1:]:
        pixels *= size
    return c * pixels + h * c * (1 + heads)


def hyper_function(x: np.ndarray, params: dict[str, np.ndarray], activation: str) -> np.ndarray:
    """h = FC2(act(FC1(GAP(x)))) -> f32[N, heads*C], sums in float64. One compiled loop: as a
    chain of small numpy calls it cost ~30 us per layer at batch 1, more than the binary conv
    it feeds."""
    flat = np.ascontiguousarray(x).reshape(x.shape[0], -1, x.shape[-1])
    return _hyper_rows(
        flat,
        params["fc1_weight"],
        params["fc1_bias"],
        params["fc2_weight"],
        params["fc2_bias"],
        _CODES[activation],
    )


@njit(cache=True)
def _hyper_rows(x, w1, b1, w2, b2, act):  # pragma: no cover - compiled
    """x f32[N, P, C] (P = 1 for rank-2 inputs: GAP is then the identity) -> f32[N, O]."""
    n_batch, pixels, channels = x.shape
    hidden, outputs = w1.shape[0], w2.shape[0]
    out = np.empty((n_batch, outputs), np.float32)
    mean = np.empty(channels, np.float64)
    h = np.empty(hidden, np.float64)
    for n in range(n_batch):
        mean[:] = 0.0
        for p in range(pixels):
            for c in range(channels):
                mean[c] += x[n, p, c]
        mean /= pixels
        for j in range(hidden):
            acc = np.float64(b1[j])
            for c in range(channels):
                acc += w1[j, c] * mean[c]
            if act == 1:
                acc = max(acc, 0.0)
            elif act == 2:
                acc = 1.0 / (1.0 + np.exp(-acc)) if acc > -700.0 else 0.0
            elif act == 3:
                acc = np.tanh(acc)
            h[j] = acc
        for o in range(outputs):
            acc = np.float64(b2[o])
            for j in range(hidden):
                acc += w2[o, j] * h[j]
            out[n, o] = acc
    return out


def per_sample(values: np.ndarray, rank: int) -> np.ndarray:
    """Reshape per-sample channel values [N, C] to broadcast over a tensor of ``rank``."""
    return values if rank == 2 else values[:, None, None, :]
