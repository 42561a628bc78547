"""Binary operators: sign functions, activation binarizers, binary layers, RPReLU / DyPReLU.

docs/OPERATORS.md gives the exact forward and backward of every operator, with its paper;
each module's docstring repeats the math of what it defines:

* :mod:`operators.functional`: ``sign_ste``, ``approx_sign``, ``progressive_sign``,
  ``weight_sign``, ``binarize_activation`` (exact sign forward, ``sign(0) = +1``; surrogate
  gradients), ``shifted_prelu`` / ``prelu``.
* :mod:`operators.binarizers`: ``SignSTE``, ``ApproxSign``, ``ProgressiveSign``, ``RSign``,
  ``DySign`` (all :class:`Binarizer`), built by name with ``make_binarizer`` / ``BINARIZERS``.
* :mod:`operators.activations`: ``PReLU`` (``torch.nn.PReLU`` with a fast backward),
  ``RPReLU``, ``DyPReLU``.
* :mod:`operators.layers`: ``BinaryConv2d``, ``BinaryLinear`` (``weight_scale`` one of
  ``WEIGHT_SCALES``).

A top-level package below ``passes`` (which builds binary networks out of these modules) and
``binarize`` (whose users reach it as ``binarize.nn``; the errors as ``binarize.errors``): it
imports only torch and itself.

Every module here takes ``[N, C]`` or ``[N, C, H, W]`` inputs with channels on dim 1.

What the other packages rely on:

* ``passes.trace`` keeps every module of ``operators`` as one opaque (leaf) call.
* The schedule (``binarize.schedule``) switches the stages through :func:`set_binarization`
  and writes the ``lam`` buffer of the binarizers whose ``backward == "progressive"``.
* ``binarize.pack`` exports the hard network and warns about parts still in a soft training
  state: a binarizer with ``enabled = False``, a progressive ``lam < lam_max``, a binary
  layer with ``binarize_weights = False``.
* The export (``passes.export.lower``) recognises the binarizers by type: ``SignSTE`` /
  ``ApproxSign`` / ``ProgressiveSign`` become a threshold-0 ``quantize`` node, ``RSign`` one
  with threshold ``alpha``, ``DySign`` a ``dyquantize`` node carrying ``fc1`` / ``fc2`` and
  ``activation`` (likewise ``DyPReLU``); a binary layer's scale is read through
  ``weight_scale_values()``.

Example::

    >>> model = nn.Sequential(BinaryConv2d(8, 8, 3, padding=1, input_binarizer="rsign"))
    >>> set_binarization(model, activations=True, weights=False)   # stage 1
    >>> [type(b).__name__ for b in binarizers(model)]
    ['RSign']
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from operators.activations import DyPReLU, PReLU, RPReLU
from operators.binarizers import (
    BINARIZERS,
    ApproxSign,
    Binarizer,
    DySign,
    ProgressiveSign,
    RSign,
    SignSTE,
    make_binarizer,
)
from operators.functional import (
    approx_sign,
    binarize_activation,
    prelu,
    progressive_sign,
    shifted_prelu,
    sign_ste,
    weight_sign,
)
from operators.layers import WEIGHT_SCALES, BinaryConv2d, BinaryLinear

__all__ = [
    "BINARIZERS",
    "WEIGHT_SCALES",
    "ApproxSign",
    "Binarizer",
    "BinaryConv2d",
    "BinaryLinear",
    "DyPReLU",
    "DySign",
    "PReLU",
    "ProgressiveSign",
    "RPReLU",
    "RSign",
    "SignSTE",
    "approx_sign",
    "binarize_activation",
    "binarizers",
    "binary_layers",
    "make_binarizer",
    "prelu",
    "progressive_sign",
    "set_binarization",
    "shifted_prelu",
    "sign_ste",
    "weight_sign",
]


def binarizers(model: nn.Module) -> Iterator[Binarizer]:
    """Every activation binarizer in ``model`` (itself included), in ``modules()`` order."""
    return (m for m in model.modules() if isinstance(m, Binarizer))


def binary_layers(model: nn.Module) -> Iterator[BinaryConv2d | BinaryLinear]:
    """Every ``BinaryConv2d`` / ``BinaryLinear`` in ``model``, in ``modules()`` order."""
    return (m for m in model.modules() if isinstance(m, BinaryConv2d | BinaryLinear))


def set_binarization(
    model: nn.Module, *, activations: bool | None = None, weights: bool | None = None
) -> None:
    """Switch binarization on or off across ``model``.

    ``activations`` sets ``enabled`` on every binarizer (``False``: they pass their input
    through); ``weights`` sets ``binarize_weights`` on every binary layer. ``None`` leaves that
    part unchanged. Two-step training (Bulat et al. 2019, ReActNet) runs stage 1 with
    ``activations=True, weights=False`` and stage 2 with both ``True``.
    """
    if activations is not None:
        for binarizer in binarizers(model):
            binarizer.enabled = bool(activations)
    if weights is not None:
        for layer in binary_layers(model):
            layer.binarize_weights = bool(weights)
