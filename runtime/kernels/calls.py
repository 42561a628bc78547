"""The checks every layer kernel makes on one call, written once.

A kernel call gets an activation array and an optional epilogue; both must match the plan
prepared at load time (``prepare_*``), or the call raises ``InputError`` naming the layer, the
layout it expected and what it got.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.errors import InputError
from runtime.kernels.epilogue import Epilogue, make_epilogue


def check_call(
    layer: str,
    x: Any,
    dtype: type,
    trailing: tuple[int, ...],
    epilogue: Epilogue | None,
    out_channels: int,
    layout: str = "",
    keep_float: bool = False,
) -> Epilogue:
    """Check that ``x`` is ``dtype[N, *trailing]`` and ``epilogue`` is for ``out_channels``
    (and keeps floats beside bits only where the kernel can: ``keep_float``); return the
    epilogue (the identity one when None)."""
    check_input(layer, x, dtype, trailing, layout)
    return check_epilogue(layer, epilogue, out_channels, keep_float)


def check_input(layer: str, x: Any, dtype: type, trailing: tuple[int, ...],
                layout: str = "") -> None:
    """Raise InputError unless ``x`` is a numpy ``dtype[N, *trailing]`` array."""
    if (
        not isinstance(x, np.ndarray)
        or x.dtype != dtype
        or x.ndim != 1 + len(trailing)
        or x.shape[1:] != trailing
    ):
        expected = f"{np.dtype(dtype).name}[N, {', '.join(map(str, trailing))}]"
        got = f"{getattr(x, 'dtype', type(x).__name__)}{list(getattr(x, 'shape', []))}"
        raise InputError(f"{layer} input must be {expected}{layout}, got {got}.")


def check_epilogue(layer: str, epilogue: Epilogue | None, out_channels: int,
                   keep_float: bool = False) -> Epilogue:
    """The epilogue (the identity one when None), checked to be for ``out_channels`` and to
    keep floats beside bits only where the kernel can (``keep_float``)."""
    epilogue = epilogue or make_epilogue(out_channels)
    if epilogue.channels != out_channels:
        raise InputError(
            f"epilogue is for {epilogue.channels} channels, the {layer} has {out_channels}."
        )
    if epilogue.keep_float and not keep_float:
        raise InputError(f"the {layer} kernel writes floats or bits, not both (keep_float).")
    return epilogue
