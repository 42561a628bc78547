"""The arithmetic under the operators: signs with surrogate gradients, and shifted PReLU.

The sign functions return the exact sign in the forward pass with the library's convention
``sign(0) = +1`` (``+1`` where ``x >= 0``, ``-1`` below; ``torch.sign`` never gives a forward
value because it maps 0 to 0, which the packed runtime's bits cannot hold). They differ only in
the gradient they pass backward, ``d L / d x = g * d out / d x`` (docs/OPERATORS.md has the
papers' titles and the derivations):

=====================  ==================================  ==============================
function               d out / d x                          paper
=====================  ==================================  ==============================
``sign_ste``           ``1{|x| <= 1}``                      Courbariaux et al. 2016 (BinaryNet)
``approx_sign``        ``(2 - 2|x|) 1{|x| < 1}``            Liu et al. 2018 (Bi-Real Net)
``progressive_sign``   ``lam (1 - tanh^2(lam x))``          Bulat et al. 2019
``weight_sign``        ``1{|w| <= 1}``                      Rastegari et al. 2016 (XNOR-Net)
=====================  ==================================  ==============================

``progressive_sign`` is the one exception to the exact forward: it returns ``tanh(lam x)``
while ``lam < lam_max`` and the hard sign once ``lam >= lam_max``.

:func:`binarize_activation` also takes the binarizer's threshold: it computes
``B(x - alpha)`` in one autograd node whose gradient to ``alpha`` is minus the summed gradient
to ``x``. :func:`shifted_prelu` is RPReLU / DyPReLU's ``prelu(x - gamma, beta) + zeta``, and
:func:`prelu` its unshifted case.

Training speed matters (a binary training step should cost little more than the float one),
so each function is one autograd node built from in-place passes over a single temporary:
the sign is written straight into a float tensor, backwards save the one tensor they need
(``x - alpha``, or ``tanh`` for the progressive forward) rather than masks, and reductions
to per-channel gradients happen before any negation.

Example::

    >>> x = torch.tensor([-1.5, -0.5, 0.0, 0.5], requires_grad=True)
    >>> approx_sign(x).sum().backward()
    >>> x.grad
    tensor([0., 1., 2., 1.])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ACTIVATION_BACKWARDS",
    "DEFAULT_LAM_MAX",
    "approx_sign",
    "binarize_activation",
    "prelu",
    "progressive_sign",
    "shifted_prelu",
    "sign_ste",
    "weight_sign",
]

DEFAULT_LAM_MAX = 1024.0
"""Bulat et al. 2019 raise lambda until the forward is the hard sign; the paper fixes no value."""

ACTIVATION_BACKWARDS = ("ste", "approx", "progressive")
"""Names accepted by :func:`binarize_activation` (and by ``Binarizer.backward``)."""


def _hard_sign(x: Tensor) -> Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere, in ``x``'s dtype (NaN maps to -1)."""
    out = torch.empty_like(x, memory_format=torch.preserve_format)
    torch.ge(x, 0, out=out)
    return out.mul_(2).sub_(1)


def _scaled_tanh(z: Tensor, lam: float) -> Tensor:
    """``tanh(lam z)`` as ``2 sigmoid(2 lam z) - 1``: 3-4x faster than ``torch.tanh`` on CPU,
    within a few ulps of 1 of it (2e-7 absolute in float32), and exactly 0 at ``z = 0``."""
    return torch.sigmoid(z * (2 * lam)).mul_(2).sub_(1)


def _surrogate_grad(kind: str, saved: Tensor, grad: Tensor, lam: float) -> Tensor:
    """``grad * dB/dz`` for the surrogate ``kind``; ``saved`` is ``z`` itself, or ``tanh(lam z)``
    for a progressive forward that returned tanh. Each result is built in place on one
    temporary."""
    if kind == "ste":
        mask = saved.abs()
        torch.le(mask, 1, out=mask)
        return mask.mul_(grad)
    if kind == "approx":
        # 2 - 2|z| is <= 0 exactly where |z| >= 1, so clamping at 0 applies the indicator.
        return saved.abs().mul_(-2).add_(2).clamp_(min=0).mul_(grad)
    tanh = saved if kind == "tanh" else _scaled_tanh(saved, lam)
    return tanh.mul(tanh).sub_(1).mul_(-lam).mul_(grad)


class _Sign(torch.autograd.Function):
    """``B(x - threshold)`` with the surrogate gradient ``kind``; the threshold gradient is
    reduced before it is negated (autograd's subtraction would negate the full tensor)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, threshold: Tensor | None, kind: str, lam: float, lam_max: float
    ) -> Tensor:
        z = x if threshold is None else x - threshold
        ctx.lam = lam
        ctx.threshold_shape = None if threshold is None else threshold.shape
        if kind == "progressive" and lam < lam_max:
            out = _scaled_tanh(z, lam)
            ctx.kind = "tanh"
            ctx.save_for_backward(out)
            return out
        ctx.kind = kind
        ctx.save_for_backward(z)
        return _hard_sign(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (saved,) = ctx.saved_tensors
        grad_z = _surrogate_grad(ctx.kind, saved, grad, ctx.lam)
        grad_threshold = None
        if ctx.threshold_shape is not None and ctx.needs_input_grad[1]:
            grad_threshold = -grad_z.sum_to_size(ctx.threshold_shape)
        return grad_z, grad_threshold, None, None, None


def sign_ste(x: Tensor) -> Tensor:
    """Sign with the clipped straight-through estimator (BinaryNet, Courbariaux et al. 2016,
    "Binarized Neural Networks").

    forward: ``+1 if x >= 0 else -1``; backward: ``d/dx = 1{|x| <= 1}`` (1 at ``|x| = 1``).

    >>> sign_ste(torch.tensor([-2.0, 0.0, 3.0]))
    tensor([-1.,  1.,  1.])
    """
    return _Sign.apply(x, None, "ste", 1.0, DEFAULT_LAM_MAX)


def approx_sign(x: Tensor) -> Tensor:
    """Sign with Bi-Real Net's piecewise-quadratic surrogate gradient (Liu et al. 2018).

    forward: ``+1 if x >= 0 else -1``; backward: ``d/dx = (2 - 2|x|) 1{|x| < 1}``, the
    derivative of the piecewise polynomial ``2x + x^2`` / ``2x - x^2`` that approximates sign.
    ReActNet (Liu et al. 2020) uses it under RSign.

    >>> approx_sign(torch.tensor([-0.1, 0.0]))
    tensor([-1.,  1.])
    """
    return _Sign.apply(x, None, "approx", 1.0, DEFAULT_LAM_MAX)


def progressive_sign(x: Tensor, lam: float | Tensor, lam_max: float = DEFAULT_LAM_MAX) -> Tensor:
    """Progressive quantization (Bulat et al. 2019): ``tanh(lam x)`` sharpening into sign.

    forward: ``tanh(lam x)`` while ``lam < lam_max``; the hard sign (``+1`` where ``x >= 0``)
    once ``lam >= lam_max``. backward, in both regimes: ``d/dx = lam (1 - tanh^2(lam x))``.
    ``lam`` is not differentiated (a schedule raises it, see ``binarize.schedule``).

    >>> progressive_sign(torch.tensor([0.5]), lam=2.0)
    tensor([0.7616])
    >>> progressive_sign(torch.tensor([0.5]), lam=1024.0)
    tensor([1.])
    """
    return _Sign.apply(x, None, "progressive", float(lam), float(lam_max))


def weight_sign(w: Tensor) -> Tensor:
    """Weight binarization with the clipped STE (XNOR-Net, Rastegari et al. 2016).

    forward: ``+1 if w >= 0 else -1``; backward to the latent float weights:
    ``d/dw = 1{|w| <= 1}``. The per-output-channel scale is applied by the layer.

    >>> weight_sign(torch.tensor([-0.3, 0.0]))
    tensor([-1.,  1.])
    """
    return _Sign.apply(w, None, "ste", 1.0, DEFAULT_LAM_MAX)


def binarize_activation(
    x: Tensor,
    backward: str,
    lam: float | Tensor | None = None,
    lam_max: float = DEFAULT_LAM_MAX,
    threshold: Tensor | None = None,
) -> Tensor:
    """Binarize ``x - threshold`` with the surrogate gradient named by ``backward``.

    ``backward`` is ``"ste"`` (:func:`sign_ste`), ``"approx"`` (:func:`approx_sign`) or
    ``"progressive"`` (:func:`progressive_sign` with ``lam``, which is then required).
    ``threshold`` (``alpha`` of RSign / DySign) broadcasts against ``x``, e.g. ``[1, C, 1, 1]``
    or per sample ``[N, C, 1, 1]``; its gradient is minus the gradient of ``x`` summed over
    the broadcast axes. ``None`` means 0.

    >>> binarize_activation(torch.tensor([-0.2, 0.2]), "approx")
    tensor([-1.,  1.])
    >>> binarize_activation(torch.tensor([-0.2, 0.2]), "ste", threshold=torch.tensor([-0.3, 0.3]))
    tensor([ 1., -1.])
    """
    if backward not in ACTIVATION_BACKWARDS:
        raise ValueError(
            f"unknown activation backward {backward!r}; choose one of {ACTIVATION_BACKWARDS}"
        )
    if backward == "progressive" and lam is None:
        raise ValueError(
            "binarize_activation(backward='progressive') needs lam (the tanh sharpness); "
            "pass lam=1.0 to start, or use backward='ste'/'approx'"
        )
    lam_value = float(lam) if backward == "progressive" else 1.0
    return _Sign.apply(x, threshold, backward, lam_value, float(lam_max))


class _ShiftedPReLU(torch.autograd.Function):
    """``max(d, 0) + beta * min(d, 0) + zeta`` with ``d = x - gamma``; see
    :func:`shifted_prelu`. ``gamma`` / ``zeta`` may be ``None`` (0). Saves only ``min(d, 0)``."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, gamma: Tensor | None, beta: Tensor, zeta: Tensor | None
    ) -> Tensor:
        slope = beta.view(1, -1, *([1] * (x.dim() - 2)))
        if gamma is None:
            positive, negative = x.clamp(min=0), x.clamp(max=0)
        else:
            positive = x - gamma
            negative = positive.clamp(max=0)
            positive.clamp_(min=0)
        # max(d, 0) + beta * min(d, 0) is exactly d (d >= 0) or exactly beta * d (d < 0).
        out = positive.addcmul_(negative, slope)
        if zeta is not None:
            out.add_(zeta)
        ctx.save_for_backward(negative, slope)
        ctx.shapes = (None if gamma is None else gamma.shape, None if zeta is None else zeta.shape)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        negative, slope = ctx.saved_tensors
        gamma_shape, zeta_shape = ctx.shapes
        need_x, need_gamma, need_beta, need_zeta = ctx.needs_input_grad
        grad_x = grad_gamma = grad_beta = grad_zeta = None
        if need_x or need_gamma:
            # d out / d x = 1 + (1 - beta) * sign(min(d, 0)): 1 where d >= 0, beta below.
            grad_x = torch.sign(negative).mul_(grad).mul_(1 - slope).add_(grad)
            if need_gamma:
                grad_gamma = -grad_x.sum_to_size(gamma_shape)
        if need_beta:
            grad_beta = (grad * negative).sum_to_size(slope.shape).view(-1)
        if need_zeta:
            grad_zeta = grad.sum_to_size(zeta_shape)
        return grad_x, grad_gamma, grad_beta, grad_zeta


def shifted_prelu(x: Tensor, gamma: Tensor | None, beta: Tensor, zeta: Tensor | None) -> Tensor:
    """RPReLU's arithmetic (ReActNet, Liu et al. 2020): ``prelu(x - gamma, beta) + zeta``::

        f(x) = x - gamma + zeta            if x >= gamma
               beta (x - gamma) + zeta     otherwise

    ``x`` has rank >= 2 with channels on dim 1; ``beta`` is ``[C]`` (or ``[1]``, shared);
    ``gamma`` and ``zeta`` broadcast against ``x`` (``[1, C, 1, 1]``, or ``[N, C, 1, 1]`` per
    sample as in DyPReLU), ``None`` meaning 0. Gradients are the exact derivatives, with slope
    1 at the kink ``x = gamma`` (the formula's upper branch); with ``d = x - gamma`` and ``g``
    the incoming gradient::

        d L / d x      = g * (1 if d >= 0 else beta_c)
        d L / d gamma  = -(d L / d x) summed over the axes gamma broadcasts along
        d L / d beta_c = sum over n, h, w of g * min(d, 0)
        d L / d zeta   = g summed over the axes zeta broadcasts along

    One fused autograd node replaces torch's PReLU backward, which is an order of magnitude
    slower on CPU. Without shifts the output equals ``torch.nn.functional.prelu(x, beta)``
    exactly.

    >>> shifted_prelu(torch.tensor([[-2.0, 2.0]]), torch.zeros(1, 2), torch.full((2,), 0.25),
    ...               torch.ones(1, 2))
    tensor([[0.5000, 3.0000]])
    """
    return _ShiftedPReLU.apply(x, gamma, beta, zeta)


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """PReLU (He et al. 2015; Bulat et al. 2019 put it in binary networks):
    ``x if x >= 0 else weight_c * x``; :func:`shifted_prelu` without shifts, so its backward is
    ``d L / d x = g * (1 if x >= 0 else weight_c)`` and
    ``d L / d weight_c = sum over n, h, w of g * min(x, 0)``.

    Same values as ``torch.nn.functional.prelu`` for inputs of rank >= 2, with a fused
    backward several times faster on CPU.

    >>> prelu(torch.tensor([[-2.0, 2.0]]), torch.tensor([0.25]))
    tensor([[-0.5000,  2.0000]])
    """
    return _ShiftedPReLU.apply(x, None, weight, None)
