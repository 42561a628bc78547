"""Activation functions that replace ReLU in binary networks.

ReLU in front of a sign destroys the information (its output is never negative, so the sign
is constantly +1); binary networks swap it for a learnable piecewise-linear function:

* **PReLU** (He et al. 2015; in binary networks Bulat et al. 2019):
  ``torch.nn.PReLU(num_parameters=C, init=0.25)``;
  :class:`PReLU` is a drop-in subclass (same parameter, same state_dict) whose backward is
  fused (torch's PReLU backward is an order of magnitude slower on CPU).
* **RPReLU** (ReActNet, Liu et al. 2020): per channel ``c``::

      f(x) = x - gamma_c + zeta_c            if x >= gamma_c
             beta_c (x - gamma_c) + zeta_c   otherwise

  i.e. a PReLU shifted by ``gamma`` on the input and ``zeta`` on the output; init
  ``gamma = zeta = 0``, ``beta = 0.25``.
* **DyPReLU** (DyBNN, Zhang et al. 2021): RPReLU whose shifts are per sample,
  ``[gamma, zeta] = fc2(act(fc1(GAP(x))))`` (one head producing ``2C`` values); ``beta`` stays a
  static parameter. ``fc2`` is zero-initialised, so DyPReLU starts exactly as
  ``PReLU(init)``.

All three are computed as ``prelu(x - gamma, beta) + zeta`` by
:func:`~operators.functional.shifted_prelu` (one fused autograd node; PReLU with
``gamma = zeta = 0``). Backward, with ``d = x - gamma`` and ``g`` the incoming gradient::

    d L / d x      = g * (1 if d >= 0 else beta_c)        (slope 1 at the kink)
    d L / d gamma  = -(d L / d x),  d L / d zeta = g      (summed per channel, or per sample)
    d L / d beta_c = sum over n, h, w of g * min(d, 0)

For DyPReLU the per-sample ``gamma`` / ``zeta`` gradients continue through the hyper head into
its weights and, via ``GAP``, into ``x``. docs/OPERATORS.md has the papers' titles.

Example::

    >>> f = RPReLU(8)
    >>> f(torch.full((1, 8), -4.0))[0, 0]     # 0.25 * (-4 - 0) + 0
    tensor(-1., grad_fn=<SelectBackward0>)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from operators.channelwise import channel_view, check_channels, global_average, hyper_head
from operators.functional import prelu, shifted_prelu

__all__ = ["DyPReLU", "PReLU", "RPReLU"]


class PReLU(nn.PReLU):
    """``torch.nn.PReLU`` (He et al. 2015; in binary networks Bulat et al. 2019):
    ``x if x >= 0 else weight_c * x``, with the fused backward of
    :func:`~operators.functional.prelu` (``d L / d x = g`` where ``x >= 0``, ``g * weight_c``
    below; ``d L / d weight_c = sum g * min(x, 0)``) on inputs of rank >= 2. An ``isinstance``
    of ``nn.PReLU`` with the same constructor, ``weight`` parameter and state_dict.

    >>> PReLU(4)(torch.full((1, 4), -2.0))
    tensor([[-0.5000, -0.5000, -0.5000, -0.5000]], grad_fn=<_ShiftedPReLUBackward>)
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            return super().forward(x)
        return prelu(x, self.weight)


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al. 2020): ``beta_c (x - gamma_c) + zeta_c`` below
    ``gamma_c``, else ``x - gamma_c + zeta_c``. Backward: slope 1 (at and above ``gamma_c``) or
    ``beta_c`` (below) to ``x``; ``d L / d gamma_c = -sum d L / d x``,
    ``d L / d zeta_c = sum g``, ``d L / d beta_c = sum g * min(x - gamma_c, 0)`` (sums over
    ``n, h, w``).

    Args:
        channels: ``C``, the size of dim 1 of the input (``[N, C]`` or ``[N, C, H, W]``).
        init: initial slope ``beta`` below the threshold (0.25 as in PReLU).

    Parameters ``gamma`` (input shift), ``zeta`` (output shift), ``beta`` (slope), all ``[C]``.
    """

    def __init__(
        self,
        channels: int,
        init: float = 0.25,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.gamma = nn.Parameter(torch.zeros(channels, **factory))
        self.zeta = nn.Parameter(torch.zeros(channels, **factory))
        self.beta = nn.Parameter(torch.full((channels,), float(init), **factory))

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.beta.shape[0])
        ndim = x.dim()
        gamma, zeta = channel_view(self.gamma, ndim), channel_view(self.zeta, ndim)
        return shifted_prelu(x, gamma, self.beta, zeta)

    def extra_repr(self) -> str:
        return str(self.beta.shape[0])


class DyPReLU(nn.Module):
    """DyBNN's DyPReLU (Zhang et al. 2021): RPReLU with per-sample shifts from a hyper head.

    ``h = fc2(act(fc1(GAP(x))))`` with ``fc1: C -> Hd``, ``fc2: Hd -> 2C`` and
    ``Hd = max(C // reduction, min_hidden)``; ``gamma = h[:, :C]``, ``zeta = h[:, C:]``;
    ``y = prelu(x - gamma, beta) + zeta`` with a static ``beta`` ``[C]`` (init ``init``).
    ``fc2`` starts at zero, so the module starts exactly as ``nn.PReLU(C, init)``. Backward:
    RPReLU's, with the per-sample ``d L / d gamma_{n,c} = -sum_{h,w} d L / d x`` and
    ``d L / d zeta_{n,c} = sum_{h,w} g`` flowing on through ``fc2``, ``act``, ``fc1`` and ``GAP``
    into the head's weights and ``x``.

    >>> f = DyPReLU(32)
    >>> x = torch.randn(2, 32, 4, 4)
    >>> torch.equal(f(x), nn.PReLU(32, 0.25)(x))
    True
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        min_hidden: int = 8,
        activation: str = "relu",
        init: float = 0.25,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.fc1, self.act, self.fc2 = hyper_head(
            channels,
            2 * channels,
            reduction=reduction,
            min_hidden=min_hidden,
            activation=activation,
            device=device,
            dtype=dtype,
        )
        self.beta = nn.Parameter(torch.full((channels,), float(init), device=device, dtype=dtype))

    def shifts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(gamma, zeta)``, each ``[N, C]``."""
        check_channels(self, x, self.beta.shape[0])
        h = self.fc2(self.act(self.fc1(global_average(x))))
        return h.chunk(2, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        gamma, zeta = self.shifts(x)
        ndim = x.dim()
        return shifted_prelu(x, channel_view(gamma, ndim), self.beta, channel_view(zeta, ndim))

    def extra_repr(self) -> str:
        return f"{self.beta.shape[0]}, activation={self.activation!r}"
