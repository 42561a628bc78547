"""Per-channel plumbing shared by the learnable-threshold and dynamic operators.

The dynamic operators of DyBNN (Zhang et al. 2021, arXiv 2110.05185) compute per-sample,
per-channel values from the input with a small "hyper" head::

    h = fc2(act(fc1(GAP(x))))      fc1: C -> Hd,  fc2: Hd -> k*C,  Hd = max(C // r, min_hidden)

``GAP`` averages over the spatial axes of an ``[N, C, H, W]`` input and is the identity on an
``[N, C]`` input. ``fc2`` starts at zero (weight and bias), so ``h == 0`` at initialisation and
the dynamic operator starts as its static counterpart. ``act`` is one of
:data:`HYPER_ACTIVATIONS`, the activations the packed runtime implements.

Example::

    >>> x = torch.randn(2, 32, 5, 5)
    >>> fc1, act, fc2 = hyper_head(32, 32, reduction=16, min_hidden=8, activation="relu")
    >>> fc2(act(fc1(global_average(x)))).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "HYPER_ACTIVATIONS",
    "channel_view",
    "check_channels",
    "global_average",
    "hidden_width",
    "hyper_head",
]

HYPER_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
"""Activation names allowed between ``fc1`` and ``fc2`` (exactly those the runtime supports)."""


def hidden_width(channels: int, reduction: int, min_hidden: int) -> int:
    """Hidden width of the hyper head: ``max(channels // reduction, min_hidden)``."""
    if channels < 1 or reduction < 1 or min_hidden < 1:
        raise ValueError(
            f"hyper head needs channels, reduction and min_hidden >= 1, got "
            f"channels={channels}, reduction={reduction}, min_hidden={min_hidden}"
        )
    return max(channels // reduction, min_hidden)


def hyper_head(
    channels: int,
    outputs: int,
    *,
    reduction: int,
    min_hidden: int,
    activation: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[nn.Linear, nn.Module, nn.Linear]:
    """Build ``(fc1, act, fc2)``: ``Linear(C, Hd)``, the named activation, ``Linear(Hd, outputs)``.

    ``fc2``'s weight and bias are zero, so the head outputs exactly 0 until it is trained.
    """
    if activation not in HYPER_ACTIVATIONS:
        raise ValueError(
            f"unknown hyper-head activation {activation!r}; choose one of "
            f"{sorted(HYPER_ACTIVATIONS)} (the activations the packed runtime implements)"
        )
    hidden = hidden_width(channels, reduction, min_hidden)
    fc1 = nn.Linear(channels, hidden, device=device, dtype=dtype)
    fc2 = nn.Linear(hidden, outputs, device=device, dtype=dtype)
    nn.init.zeros_(fc2.weight)
    nn.init.zeros_(fc2.bias)
    return fc1, HYPER_ACTIVATIONS[activation](), fc2


def global_average(x: Tensor) -> Tensor:
    """``[N, C, H, W] -> [N, C]`` spatial mean; ``[N, C]`` passes through unchanged.

    Written as a sum divided on the small result: the sum's backward is a broadcast view,
    where ``mean``'s backward would divide a full-size tensor."""
    if x.dim() == 2:
        return x
    return x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])


def channel_view(values: Tensor, ndim: int) -> Tensor:
    """Reshape ``[C]`` or per-sample ``[N, C]`` values to broadcast against a rank-``ndim``
    tensor whose channel axis is dim 1 (``[1, C, 1, 1]`` / ``[N, C, 1, 1]`` for rank 4)."""
    batch = values.shape[0] if values.dim() == 2 else 1
    return values.view(batch, values.shape[-1], *([1] * (ndim - 2)))


def check_channels(owner: nn.Module, x: Tensor, channels: int) -> None:
    """Raise a ``ValueError`` naming ``owner`` unless ``x`` is ``[N, C]`` or ``[N, C, H, W]``
    with ``C == channels``."""
    if x.dim() not in (2, 4) or x.shape[1] != channels:
        raise ValueError(
            f"{type(owner).__name__}({channels}) expects input [N, {channels}] or "
            f"[N, {channels}, H, W] (channels on dim 1), got shape {list(x.shape)}; build it "
            f"with the channel count of the tensor it binarizes"
        )
