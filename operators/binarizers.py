"""Activation binarizers: modules that map a float activation to ``{-1, +1}``.

Every binarizer computes ``x_b = B(x - alpha)`` where ``B`` is the exact sign
(``+1`` where its input is ``>= 0``) with the surrogate gradient named by ``backward``
(see :mod:`operators.functional`), and ``alpha`` is the threshold:

===================  ==========================================  ==========================
module               threshold ``alpha``                          paper
===================  ==========================================  ==========================
``SignSTE``          0, backward ``"ste"``                        BinaryNet (Courbariaux 2016)
``ApproxSign``       0, backward ``"approx"``                     Bi-Real Net (Liu 2018)
``ProgressiveSign``  0, backward ``"progressive"`` (``lam``)      Bulat et al. 2019
``RSign``            learnable per channel, ``alpha_c``, init 0   ReActNet (Liu 2020)
``DySign``           per sample: ``fc2(act(fc1(GAP(x))))``        DyBNN (Zhang 2021)
===================  ==========================================  ==========================

The channel axis is dim 1; inputs are ``[N, C]`` or ``[N, C, H, W]``. ``enabled = False``
turns any binarizer into the identity (stage 1 of a schedule that keeps some activations
float, or a float baseline). The buffer ``lam`` (tanh sharpness, used when ``backward ==
"progressive"``) is written by the schedule and saved in ``state_dict`` so a resumed run
continues the ramp. Backward, with ``g`` the incoming gradient and ``B'`` the surrogate
derivative: ``d L / d x = g * B'(x - alpha)``; for RSign ``d L / d alpha_c`` is minus the sum of
``g * B'(x - alpha)`` over the batch and spatial positions of channel ``c``; for DySign the
same sum per sample flows on through the hyper head into its weights and, via ``GAP``, into
``x``. docs/OPERATORS.md has the papers' titles.

Example::

    >>> b = RSign(16)
    >>> y = b(torch.randn(2, 16, 8, 8))          # values in {-1, +1}
    >>> b.static_threshold().shape
    torch.Size([16])
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from operators.channelwise import (
    channel_view,
    check_channels,
    global_average,
    hyper_head,
)
from operators.errors import ConversionError
from operators.functional import ACTIVATION_BACKWARDS, DEFAULT_LAM_MAX, binarize_activation

__all__ = [
    "BINARIZERS",
    "ApproxSign",
    "Binarizer",
    "DySign",
    "ProgressiveSign",
    "RSign",
    "SignSTE",
    "make_binarizer",
]


class Binarizer(nn.Module):
    """Base of every activation binarizer: ``x_b = B(x - alpha)``, identity when disabled.

    forward: ``+1`` where ``x - alpha >= 0``, ``-1`` below (the progressive backward's forward
    is ``tanh(lam (x - alpha))`` while ``lam < lam_max``); backward:
    ``d L / d x = g * B'(x - alpha)`` with ``B'`` the surrogate named by ``backward``
    (``1{|z| <= 1}``, ``(2 - 2|z|) 1{|z| < 1}`` or ``lam (1 - tanh^2(lam z))``). When disabled,
    forward and backward are the identity.

    Args:
        channels: channel count of the input (dim 1); required by subclasses with
            per-channel state, informational otherwise.
        backward: surrogate gradient of ``B``: ``"ste"``, ``"approx"`` or ``"progressive"``.
        lam_max: ``lam`` at which the progressive forward becomes the hard sign.

    Attributes:
        enabled: ``False`` makes ``forward`` return its input unchanged.
        lam: scalar float buffer (default 1.0), the progressive tanh sharpness.
        dynamic: ``True`` when the threshold is computed per sample (DySign).
    """

    dynamic: ClassVar[bool] = False

    def __init__(
        self,
        channels: int | None = None,
        *,
        backward: str,
        lam_max: float = DEFAULT_LAM_MAX,
    ) -> None:
        super().__init__()
        if backward not in ACTIVATION_BACKWARDS:
            raise ValueError(
                f"{type(self).__name__}: unknown backward {backward!r}; choose one of "
                f"{ACTIVATION_BACKWARDS}"
            )
        self.channels = channels
        self.backward = backward
        self.lam_max = float(lam_max)
        self.enabled = True
        self.register_buffer("lam", torch.tensor(1.0))

    def threshold(self, x: Tensor) -> Tensor | None:
        """``alpha`` broadcastable against ``x``, or ``None`` for a zero threshold."""
        return None

    def static_threshold(self) -> Tensor | None:
        """Per-channel threshold ``[C]`` for a static learnable one (RSign, detached), ``None``
        when the threshold is 0 (plain sign); DySign, whose threshold is per sample, raises.
        (``binarize.pack`` reads the parameters of each binarizer type itself.)"""
        return None

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        return binarize_activation(
            x, self.backward, self.lam, self.lam_max, threshold=self.threshold(x)
        )

    def extra_repr(self) -> str:
        parts = [] if self.channels is None else [str(self.channels)]
        parts.append(f"backward={self.backward!r}")
        if self.backward == "progressive":
            parts.append(f"lam_max={self.lam_max:g}")
        if not self.enabled:
            parts.append("enabled=False")
        return ", ".join(parts)


class SignSTE(Binarizer):
    """``sign(x)`` with the clipped straight-through estimator: forward ``+1 if x >= 0 else -1``,
    backward ``d L / d x = g * 1{|x| <= 1}`` (BinaryNet, Courbariaux et al. 2016).

    >>> SignSTE()(torch.tensor([[-0.5, 0.0]]))
    tensor([[-1.,  1.]])
    """

    def __init__(self, channels: int | None = None) -> None:
        super().__init__(channels, backward="ste")


class ApproxSign(Binarizer):
    """``sign(x)`` with Bi-Real Net's gradient (Liu et al. 2018): forward ``+1 if x >= 0 else
    -1``, backward ``d L / d x = g * (2 - 2|x|) 1{|x| < 1}``, the derivative of the piecewise
    polynomial ``2x + x^2`` (``-1 <= x < 0``) / ``2x - x^2`` (``0 <= x < 1``).

    >>> ApproxSign()(torch.tensor([[-0.5, 0.0]]))
    tensor([[-1.,  1.]])
    """

    def __init__(self, channels: int | None = None) -> None:
        super().__init__(channels, backward="approx")


class ProgressiveSign(Binarizer):
    """Progressive quantization (Bulat et al. 2019): ``tanh(lam x)`` while ``lam < lam_max``,
    the hard sign once the schedule has raised ``lam`` to ``lam_max``; backward in both regimes
    ``d L / d x = g * lam (1 - tanh^2(lam x))`` (``lam`` gets no gradient).

    >>> b = ProgressiveSign()
    >>> b(torch.tensor([[0.5]]))                  # lam = 1: tanh(0.5)
    tensor([[0.4621]])
    >>> _ = b.lam.fill_(1024.0)
    >>> b(torch.tensor([[0.5]]))
    tensor([[1.]])
    """

    def __init__(self, channels: int | None = None, lam_max: float = DEFAULT_LAM_MAX) -> None:
        super().__init__(channels, backward="progressive", lam_max=lam_max)


class RSign(Binarizer):
    """ReActNet's RSign (Liu et al. 2020): ``x_b = B(x - alpha_c)``, ``alpha`` a learnable
    per-channel threshold initialised to 0. Backward (``B'`` the ``backward`` surrogate,
    approx by default): ``d L / d x = g * B'(x - alpha_c)`` and
    ``d L / d alpha_c = -sum_{n,h,w} d L / d x``.

    >>> b = RSign(4)
    >>> b(torch.tensor([[-0.1, 0.0, 0.1, 2.0]])).tolist()
    [[-1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(
        self,
        channels: int,
        backward: str = "approx",
        lam_max: float = DEFAULT_LAM_MAX,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, backward=backward, lam_max=lam_max)
        self.alpha = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

    def threshold(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.alpha.shape[0])
        return channel_view(self.alpha, x.dim())

    def static_threshold(self) -> Tensor:
        return self.alpha.detach()


class DySign(Binarizer):
    """DyBNN's DySign (Zhang et al. 2021): a per-sample, per-channel threshold computed from
    the input, ``x_b = B(x - alpha(x))`` with ``alpha = fc2(act(fc1(GAP(x))))``.

    ``fc1: C -> Hd``, ``fc2: Hd -> C`` with ``Hd = max(C // reduction, min_hidden)``; the
    paper gives ``reduction = 16`` and two FCs but not the activation between them (ReLU by
    default). ``fc2`` is zero-initialised, so DySign starts exactly as ``RSign`` with
    ``alpha = 0``. The threshold is part of the packed graph (``dyquantize``).

    Backward: ``d L / d x = g * B'(x - alpha)`` directly, plus the path through the head:
    ``d L / d alpha_{n,c} = -sum_{h,w} g * B'(x - alpha)`` flows back through ``fc2``, ``act``,
    ``fc1`` and ``GAP`` (``1 / (H W)`` to each position) into ``x`` and the head's weights.

    >>> b = DySign(32)
    >>> x = torch.randn(2, 32, 4, 4)
    >>> torch.equal(b(x), RSign(32)(x))
    True
    """

    dynamic: ClassVar[bool] = True

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        min_hidden: int = 8,
        activation: str = "relu",
        backward: str = "approx",
        lam_max: float = DEFAULT_LAM_MAX,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, backward=backward, lam_max=lam_max)
        self.activation = activation
        self.fc1, self.act, self.fc2 = hyper_head(
            channels,
            channels,
            reduction=reduction,
            min_hidden=min_hidden,
            activation=activation,
            device=device,
            dtype=dtype,
        )

    def threshold(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.fc1.in_features)
        return channel_view(self.fc2(self.act(self.fc1(global_average(x)))), x.dim())

    def static_threshold(self) -> Tensor:
        raise ConversionError(
            f"DySign({self.channels}) has no static threshold: it is computed per sample from "
            f"fc1/fc2 (activation {self.activation!r}); pack it as a 'dyquantize' node "
            f"(check `binarizer.dynamic` first)"
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}"


BINARIZERS: dict[str, type[Binarizer]] = {
    "ste": SignSTE,
    "approx": ApproxSign,
    "progressive": ProgressiveSign,
    "rsign": RSign,
    "dysign": DySign,
}
"""Binarizer classes by the names recipes and ``BinaryConv2d(input_binarizer=...)`` use."""


def make_binarizer(name: str, channels: int, **options: Any) -> Binarizer:
    """Build the binarizer called ``name`` (a key of :data:`BINARIZERS`) for ``channels``
    input channels; ``options`` go to its constructor (e.g. ``backward="ste"`` for RSign).

    >>> make_binarizer("rsign", 64)
    RSign(64, backward='approx')
    """
    if name not in BINARIZERS:
        raise ValueError(
            f"unknown activation binarizer {name!r}; choose one of {sorted(BINARIZERS)} "
            f"or pass a Binarizer module"
        )
    return BINARIZERS[name](channels, **options)
