"""Binary convolution and linear layers: binary activations times scaled binary weights.

``BinaryConv2d`` and ``BinaryLinear`` are drop-in subclasses of ``nn.Conv2d`` / ``nn.Linear``
(same constructor arguments, same ``weight``/``bias`` parameters and state_dict keys) that
compute::

    y = conv(B(x), W_b) + bias        W_b = alpha_o * sign(W)     (XNOR-Net, Rastegari 2016)

evaluated as ``alpha_o * conv(B(x), sign(W)) + bias`` (the same number, one scale per output
channel; :mod:`operators.scaled_products`): the ``+-1`` sum is computed exactly and scaled
once, so it equals the packed runtime's popcount sum times ``alpha`` in training and in eval
-- a sum that is exactly 0 stays 0 and the next sign sees ``+1`` on both sides -- while the
gradients to ``x``, ``W`` and ``alpha`` are those of the first line.

``B`` is the ``input_binarizer`` (any :class:`~operators.binarizers.Binarizer`, a name from
:data:`~operators.binarizers.BINARIZERS`, or ``None`` for a float input). ``sign`` is
:func:`~operators.functional.weight_sign` (``sign(0) = +1``, clipped STE ``1{|W| <= 1}`` back
to the latent float weights). ``alpha_o`` is one scale per output channel, chosen by
``weight_scale``:

============  ====================================================  ===========================
mode          ``alpha_o``                                            gradient through alpha
============  ====================================================  ===========================
detached      ``mean_{c,kh,kw} |W_o|``                               none (ReActNet, Liu 2020)
attached      ``mean_{c,kh,kw} |W_o|``                               yes (XNOR-Net)
learnable     ``scale_o``, a Parameter initialised to mean|W_o|      to ``scale``
none          1                                                      --
============  ====================================================  ===========================

Backward to the latent weights, with ``G = d L / d W_b``, ``s = sign(W)``, ``n = C kh kw`` (or
``C``) weights per output channel and ``ste = 1{|W| <= 1}``::

    detached:   d L / d W[o, k] = G[o, k] alpha_o ste[o, k]
    attached:   the detached term + sgn(W[o, k]) / n * sum_j G[o, j] s[o, j]
    learnable:  d L / d W[o, k] = G[o, k] scale_o ste[o, k]
                d L / d scale_o = sum_k G[o, k] s[o, k]
    none:       d L / d W[o, k] = G[o, k] ste[o, k]

(``sgn``, the derivative of ``|W|``, is 0 at 0; the attached line is XNOR-Net's gradient through
its analytic scale). The input gets the conv / linear gradient, then ``B``'s surrogate
gradient. docs/OPERATORS.md has the papers' titles.

``binarize_weights = False`` keeps ``W`` float (stage 1 of the two-step schedule of Bulat et al.
2019 and ReActNet: binary activations, real weights): ``y = conv(B(x), W) + bias``, a float
convolution that nothing packs, so not exact by nature. A disabled binarizer (or a
progressive one still in its ``tanh`` phase, or ``input_binarizer=None``) gives a float
``B(x)``: the product is then float too, computed the same way. Only zero padding is allowed,
since the packed runtime reproduces exactly that.

Example::

    >>> conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    >>> bconv = BinaryConv2d.from_float(conv, input_binarizer="rsign")
    >>> bconv(torch.randn(2, 16, 8, 8)).shape
    torch.Size([2, 32, 8, 8])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.binarizers import make_binarizer
from operators.functional import weight_sign
from operators.scaled_products import scaled_conv2d, scaled_linear

__all__ = ["WEIGHT_SCALES", "BinaryConv2d", "BinaryLinear"]

WEIGHT_SCALES = ("detached", "attached", "learnable", "none")
"""Accepted values of ``weight_scale``."""


class _BinaryWeights:
    """Weight binarization and input-binarizer plumbing shared by the binary layers.

    Mixed in before ``nn.Conv2d`` / ``nn.Linear``; relies on their ``weight`` parameter.
    """

    weight: nn.Parameter
    input_binarizer: nn.Module
    weight_scale: str
    binarize_weights: bool

    def _init_binary(
        self,
        channels: int,
        input_binarizer: nn.Module | str | None,
        weight_scale: str,
        binarize_weights: bool,
    ) -> None:
        if weight_scale not in WEIGHT_SCALES:
            raise ValueError(
                f"{type(self).__name__}: unknown weight_scale {weight_scale!r}; choose one of "
                f"{WEIGHT_SCALES}"
            )
        self.weight_scale = weight_scale
        self.binarize_weights = bool(binarize_weights)
        if input_binarizer is None:
            input_binarizer = nn.Identity()
        elif isinstance(input_binarizer, str):
            input_binarizer = make_binarizer(input_binarizer, channels).to(
                device=self.weight.device, dtype=self.weight.dtype
            )
        self.input_binarizer = input_binarizer
        if weight_scale == "learnable":
            self.scale = nn.Parameter(self._mean_abs_weight().detach().clone())

    def _mean_abs_weight(self) -> Tensor:
        """``mean_{c,kh,kw} |W_o|``, one value per output channel."""
        return self.weight.abs().mean(dim=tuple(range(1, self.weight.dim())))

    def _reset_scale(self) -> None:
        scale = getattr(self, "scale", None)
        if scale is not None:
            with torch.no_grad():
                scale.copy_(self._mean_abs_weight())

    def weight_scale_values(self) -> Tensor:
        """``alpha_o`` ``[O]`` exactly as used in ``forward`` (ones for ``"none"``)."""
        if self.weight_scale == "detached":
            return self._mean_abs_weight().detach()
        if self.weight_scale == "attached":
            return self._mean_abs_weight()
        if self.weight_scale == "learnable":
            return self.scale
        return torch.ones(self.weight.shape[0], device=self.weight.device, dtype=self.weight.dtype)

    def binary_weight(self) -> Tensor:
        """``W_b = alpha_o * sign(W)`` broadcast over ``W``'s shape, or ``W`` itself when
        ``binarize_weights`` is ``False``: the weight ``forward`` multiplies by, for inspection
        (``forward`` applies ``alpha`` to the exact ``sign(W)`` product instead)."""
        if not self.binarize_weights:
            return self.weight
        signs = weight_sign(self.weight)
        if self.weight_scale == "none":
            return signs
        alpha = self.weight_scale_values()
        return signs * alpha.view(-1, *([1] * (signs.dim() - 1)))

    def _binary_repr(self) -> str:
        return f"weight_scale={self.weight_scale!r}, binarize_weights={self.binarize_weights}"


class BinaryConv2d(_BinaryWeights, nn.Conv2d):
    """``nn.Conv2d`` with a binarized input and binarized, per-output-channel scaled weights.

    Args: those of ``nn.Conv2d`` (``padding_mode`` must be ``"zeros"``), plus keyword-only
        input_binarizer: a module, a binarizer name (``"ste"``, ``"approx"``,
            ``"progressive"``, ``"rsign"``, ``"dysign"``; built for ``in_channels``), or
            ``None`` (float input).
        weight_scale: ``"detached"``, ``"attached"``, ``"learnable"`` or ``"none"``.
        binarize_weights: ``False`` keeps the weights float (activations-only stage).

    >>> BinaryConv2d(8, 16, 3, padding=1, input_binarizer="approx")(torch.randn(1, 8, 5, 5)).shape
    torch.Size([1, 16, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        input_binarizer: nn.Module | str | None = "ste",
        weight_scale: str = "detached",
        binarize_weights: bool = True,
    ) -> None:
        if padding_mode != "zeros":
            raise ValueError(
                f"BinaryConv2d supports padding_mode='zeros' only (what the packed runtime "
                f"reproduces), got padding_mode={padding_mode!r}; keep this conv float or "
                f"pad explicitly before it"
            )
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self._init_binary(in_channels, input_binarizer, weight_scale, binarize_weights)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._reset_scale()

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_binarizer(x)
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        if not self.binarize_weights:  # stage 1: float weights, a float convolution
            return F.conv2d(x, self.weight, self.bias, *geometry)
        signs = weight_sign(self.weight)
        if self.weight_scale == "none":
            return F.conv2d(x, signs, self.bias, *geometry)
        return scaled_conv2d(x, signs, self.weight_scale_values(), self.bias, *geometry)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **options: Any) -> BinaryConv2d:
        """A ``BinaryConv2d`` with ``conv``'s hyper-parameters, weight, bias, dtype, device and
        training mode; ``options`` are the keyword-only binarization options."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(
                f"BinaryConv2d.from_float expects an nn.Conv2d, got {type(conv).__name__}"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            conv.weight.device,
            conv.weight.dtype,
            **options,
        )
        _copy_parameters(conv, layer)
        return layer


class BinaryLinear(_BinaryWeights, nn.Linear):
    """``nn.Linear`` with a binarized input and binarized, per-output-row scaled weights.

    Same options as :class:`BinaryConv2d`; the input binarizer is built for ``in_features``
    and sees ``[N, in_features]`` inputs (channel axis dim 1).

    >>> BinaryLinear(64, 10, input_binarizer="rsign")(torch.randn(4, 64)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        input_binarizer: nn.Module | str | None = "ste",
        weight_scale: str = "detached",
        binarize_weights: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_binary(in_features, input_binarizer, weight_scale, binarize_weights)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._reset_scale()

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_binarizer(x)
        if not self.binarize_weights:  # stage 1: float weights, a float product
            return F.linear(x, self.weight, self.bias)
        signs = weight_sign(self.weight)
        if self.weight_scale == "none":
            return F.linear(x, signs, self.bias)
        return scaled_linear(x, signs, self.weight_scale_values(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> BinaryLinear:
        """A ``BinaryLinear`` with ``linear``'s sizes, weight, bias, dtype, device and training
        mode; ``options`` are the keyword-only binarization options."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(
                f"BinaryLinear.from_float expects an nn.Linear, got {type(linear).__name__}"
            )
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            linear.weight.device,
            linear.weight.dtype,
            **options,
        )
        _copy_parameters(linear, layer)
        return layer


def _copy_parameters(source: nn.Module, layer: nn.Module) -> None:
    """Copy ``weight``/``bias`` and the training mode; re-derive a learnable scale from the
    copied weight."""
    with torch.no_grad():
        layer.weight.copy_(source.weight)
        if source.bias is not None:
            layer.bias.copy_(source.bias)
    layer._reset_scale()
    layer.train(source.training)
