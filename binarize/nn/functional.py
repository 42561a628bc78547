"""Sign functions with surrogate gradients: the arithmetic under every binarizer.

Every function here returns the exact sign in the forward pass with the library's convention
``sign(0) = +1`` (``+1`` where ``x >= 0``, ``-1`` below; ``torch.sign`` is never used because it
maps 0 to 0, a value the packed runtime's bits cannot hold). They differ only in the gradient
they pass backward (PAPERS.md, "Activation binarizers" and "Weight binarization"):

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

The kernels avoid bool temporaries (slow on CPU) and keep to one float temporary per pass:
the forward writes the comparison straight into a float tensor, and each backward saves only
its input ``x``, which already exists, instead of a mask.

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
    "progressive_sign",
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


def _clipped_identity_grad(x: Tensor, grad: Tensor) -> Tensor:
    """``grad * 1{|x| <= 1}`` (the clipped straight-through estimator)."""
    mask = x.abs()
    torch.le(mask, 1, out=mask)
    return mask.mul_(grad)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return _hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return _clipped_identity_grad(x, grad)


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return _hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        # 2 - 2|x| is <= 0 exactly where |x| >= 1, so clamping at 0 applies the indicator.
        return x.abs().mul_(-2).add_(2).clamp_(min=0).mul_(grad)


class _ProgressiveSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float, lam_max: float) -> Tensor:
        ctx.lam = lam
        if lam < lam_max:
            out = torch.tanh(x * lam)
            ctx.save_for_backward(out)
            ctx.saved_is_tanh = True
            return out
        ctx.save_for_backward(x)
        ctx.saved_is_tanh = False
        return _hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (saved,) = ctx.saved_tensors
        tanh = saved if ctx.saved_is_tanh else torch.tanh(saved * ctx.lam)
        # lam * (1 - tanh^2), in place on the one temporary tanh * tanh.
        return tanh.mul(tanh).sub_(1).mul_(-ctx.lam).mul_(grad), None, None


class _WeightSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return _hard_sign(w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return _clipped_identity_grad(w, grad)


def sign_ste(x: Tensor) -> Tensor:
    """Sign with the clipped straight-through estimator (BinaryNet, Courbariaux et al. 2016).

    forward: ``+1 if x >= 0 else -1``; backward: ``d/dx = 1{|x| <= 1}`` (1 at ``|x| = 1``).

    >>> sign_ste(torch.tensor([-2.0, 0.0, 3.0]))
    tensor([-1.,  1.,  1.])
    """
    return _SignSTE.apply(x)


def approx_sign(x: Tensor) -> Tensor:
    """Sign with Bi-Real Net's piecewise-quadratic surrogate gradient (Liu et al. 2018).

    forward: ``+1 if x >= 0 else -1``; backward: ``d/dx = (2 - 2|x|) 1{|x| < 1}``, the
    derivative of the piecewise polynomial ``2x + x^2`` / ``2x - x^2`` that approximates sign.
    ReActNet (Liu et al. 2020) uses it under RSign.

    >>> approx_sign(torch.tensor([-0.1, 0.0]))
    tensor([-1.,  1.])
    """
    return _ApproxSign.apply(x)


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
    return _ProgressiveSign.apply(x, float(lam), float(lam_max))


def weight_sign(w: Tensor) -> Tensor:
    """Weight binarization with the clipped STE (XNOR-Net, Rastegari et al. 2016).

    forward: ``+1 if w >= 0 else -1``; backward to the latent float weights:
    ``d/dw = 1{|w| <= 1}``. The per-output-channel scale is applied by the layer.

    >>> weight_sign(torch.tensor([-0.3, 0.0]))
    tensor([-1.,  1.])
    """
    return _WeightSign.apply(w)


def binarize_activation(
    x: Tensor,
    backward: str,
    lam: float | Tensor | None = None,
    lam_max: float = DEFAULT_LAM_MAX,
) -> Tensor:
    """Binarize an activation with the surrogate gradient named by ``backward``.

    ``backward`` is ``"ste"`` (:func:`sign_ste`), ``"approx"`` (:func:`approx_sign`) or
    ``"progressive"`` (:func:`progressive_sign` with ``lam``, which is then required).

    >>> binarize_activation(torch.tensor([-0.2, 0.2]), "approx")
    tensor([-1.,  1.])
    """
    if backward == "ste":
        return sign_ste(x)
    if backward == "approx":
        return approx_sign(x)
    if backward == "progressive":
        if lam is None:
            raise ValueError(
                "binarize_activation(backward='progressive') needs lam (the tanh sharpness); "
                "pass lam=1.0 to start, or use backward='ste'/'approx'"
            )
        return progressive_sign(x, lam, lam_max)
    raise ValueError(
        f"unknown activation backward {backward!r}; choose one of {ACTIVATION_BACKWARDS}"
    )
