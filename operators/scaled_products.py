"""Binary convolution and matrix product computed exactly, with the weight scale applied after.

A binary layer's weight is ``alpha_o * sign(W_o)``. Multiplying the weights by ``alpha`` before
the convolution (the textbook form) rounds every product ``alpha_o * (+-1)`` into the sum, so a
sum of ``+-1`` terms that is exactly 0 comes out as about ``+-1e-7`` and the next sign can
flip; the packed runtime counts bits and gets the integer. Both functions here compute instead::

    y_o = alpha_o * op(x, sign(W))_o + bias_o

which is the same number mathematically, since the scale is one per output channel::

    conv(x, alpha_o * s(W_o)) = alpha_o * conv(x, s(W_o))

When ``x`` is in ``{-1, +1}`` (zero padding adds 0s), every term of ``op(x, sign(W))`` is an
integer and float32 adds integers exactly while partial sums stay below ``2^24`` in magnitude
(``2^53`` in float64): that covers any layer with fewer than ``2^24`` terms per output
(``C * kh * kw``), whatever the summation order. So the result is the runtime's popcount sum
times ``alpha``, rounded once.

The backward is the textbook form's, evaluated as cheaply: with ``W_b = alpha_o * s(W_o)``
and ``G = dL/dy``,

* ``dL/dx = op^T(G, W_b)`` (the transposed convolution / ``G @ W_b``),
* ``dL/dW_b = op_weight_grad(x, G)``, then ``dL/ds(W_o) = alpha_o * dL/dW_b,o`` and
  ``dL/dalpha_o = sum_{c,kh,kw} dL/dW_b,o * s(W_o)``,
* ``dL/dbias_o = sum_{n,h,w} G_o``;

only weight-sized tensors are scaled, so a training step costs what the textbook form costs.
The gradient to ``s(W)`` continues through :func:`~operators.functional.weight_sign`'s STE,
and the gradient to ``alpha`` through whatever computed it (none when it is detached).

Example::

    >>> x = torch.tensor([[1.0, -1.0, 1.0]])
    >>> scaled_linear(x, torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([0.1]), None)
    tensor([[0.1000]])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["scaled_conv2d", "scaled_linear"]

_Pair = tuple[int, int]


class _ScaledConv2d(torch.autograd.Function):
    """``alpha * conv(x, signs) + bias`` with the gradients of ``conv(x, alpha * signs) + bias``
    (see the module doc); ``padding`` is explicit integers here."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        signs: Tensor,
        alpha: Tensor,
        bias: Tensor | None,
        stride: _Pair,
        padding: _Pair,
        dilation: _Pair,
        groups: int,
    ) -> Tensor:
        out = F.conv2d(x, signs, None, stride, padding, dilation, groups)
        out.mul_(alpha.view(1, -1, 1, 1))
        if bias is not None:
            out.add_(bias.view(1, -1, 1, 1))
        ctx.save_for_backward(x, signs, alpha)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, signs, alpha = ctx.saved_tensors
        grad = grad.to(x.dtype)  # autocast ran the forward in lower precision; ours is x's
        need_x, need_signs, need_alpha, need_bias = ctx.needs_input_grad[:4]
        stride, padding, dilation, groups = ctx.geometry
        scale = alpha.view(-1, 1, 1, 1)
        grad_x, grad_wb, grad_bias = torch.ops.aten.convolution_backward(
            grad,
            x,
            signs * scale,
            [signs.shape[0]] if ctx.has_bias else None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            groups,
            [need_x, need_signs or need_alpha, need_bias and ctx.has_bias],
        )
        grad_signs = grad_wb * scale if need_signs else None
        grad_alpha = (grad_wb * signs).sum(dim=(1, 2, 3)) if need_alpha else None
        return grad_x, grad_signs, grad_alpha, grad_bias, None, None, None, None


class _ScaledLinear(torch.autograd.Function):
    """``alpha * (x @ signs^T) + bias`` with the gradients of ``x @ (alpha * signs)^T + bias``;
    ``x`` is ``[..., in_features]``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, signs: Tensor, alpha: Tensor, bias: Tensor | None) -> Tensor:
        out = F.linear(x, signs)
        out.mul_(alpha)
        if bias is not None:
            out.add_(bias)
        ctx.save_for_backward(x, signs, alpha)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, signs, alpha = ctx.saved_tensors
        grad = grad.to(x.dtype)  # autocast ran the forward in lower precision; ours is x's
        need_x, need_signs, need_alpha, need_bias = ctx.needs_input_grad
        grad_x = grad_signs = grad_alpha = grad_bias = None
        scale = alpha.view(-1, 1)
        if need_x:
            grad_x = grad.matmul(signs * scale)
        flat_grad = grad.reshape(-1, grad.shape[-1])
        if need_signs or need_alpha:
            grad_wb = flat_grad.t().mm(x.reshape(-1, x.shape[-1]))
            if need_signs:
                grad_signs = grad_wb * scale
            if need_alpha:
                grad_alpha = (grad_wb * signs).sum(dim=1)
        if need_bias:
            grad_bias = flat_grad.sum(dim=0)
        return grad_x, grad_signs, grad_alpha, grad_bias


def _explicit_padding(
    x: Tensor, padding: str | _Pair, kernel: _Pair, dilation: _Pair
) -> tuple[Tensor, _Pair]:
    """``nn.Conv2d``'s padding as integers: ``"valid"`` is 0; ``"same"`` pads
    ``dilation * (kernel - 1)`` in total per axis, half on each side and the odd one on the
    bottom/right (added to ``x`` here, as ``F.conv2d`` does)."""
    if not isinstance(padding, str):
        return x, (int(padding[0]), int(padding[1]))
    if padding == "valid":
        return x, (0, 0)
    totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    left = (totals[0] // 2, totals[1] // 2)
    extra_h, extra_w = totals[0] - 2 * left[0], totals[1] - 2 * left[1]
    if extra_h or extra_w:
        x = F.pad(x, (0, extra_w, 0, extra_h))
    return x, left


def scaled_conv2d(
    x: Tensor,
    signs: Tensor,
    alpha: Tensor,
    bias: Tensor | None,
    stride: _Pair,
    padding: str | _Pair,
    dilation: _Pair,
    groups: int,
) -> Tensor:
    """``y[:, o] = alpha_o * conv2d(x, signs)[:, o] + bias_o``: exact ``+-1`` sums, scaled once.

    ``signs`` is ``sign(W)`` ``[O, C/groups, kh, kw]``, ``alpha`` ``[O]``, ``bias`` ``[O]`` or
    ``None``; the geometry is ``nn.Conv2d``'s (``padding`` may be ``"same"``/``"valid"``).
    Gradients are those of ``conv2d(x, alpha * signs, bias)`` (module doc).

    >>> x = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 1, 2, 2)
    >>> scaled_conv2d(x, torch.ones(1, 1, 2, 2), torch.tensor([0.3]), None, (1, 1), (0, 0),
    ...               (1, 1), 1).item()
    0.0
    """
    kernel = (int(signs.shape[2]), int(signs.shape[3]))
    x, explicit = _explicit_padding(x, padding, kernel, dilation)
    return _ScaledConv2d.apply(
        x, signs, alpha, bias, tuple(stride), explicit, tuple(dilation), groups
    )


def scaled_linear(x: Tensor, signs: Tensor, alpha: Tensor, bias: Tensor | None) -> Tensor:
    """``y[..., o] = alpha_o * (x @ signs^T)[..., o] + bias_o``: exact ``+-1`` sums, scaled once.

    ``signs`` is ``sign(W)`` ``[O, I]``, ``alpha`` ``[O]``, ``bias`` ``[O]`` or ``None``, ``x``
    ``[..., I]``. Gradients are those of ``linear(x, alpha * signs, bias)`` (module doc).
    """
    return _ScaledLinear.apply(x, signs, alpha, bias)
