"""Fold per-channel transforms of a lowered :class:`~runtime.schema.Graph` (runs after ``lower``).

Two rewrites, repeated until nothing changes:

1. **affine . affine -> affine.** ``(x*s1 + b1)*s2 + b2 = x*(s1*s2) + (b1*s2 + b2)``: the weight
   scale alpha_o and bias of a binary layer merge with the BatchNorm after it.
2. **affine -> quantize -> quantize.** A binarizer reading an affine that nothing else reads
   decides ``bit = s*(a*x + b) >= s*t``. Per channel, with ``a != 0`` this is
   ``s'*x >= s'*t'`` where ``s' = s*sign(a)`` and ``t' = (t - b)/a``; with ``a == 0`` the bit
   is the constant ``s*b >= s*t``, encoded as ``t' = -inf`` (always 1) or ``+inf`` (always 0).
   When the affine's input is integer-valued (an op declared with ``integer_output`` in the
   runtime's registry: ``bconv2d``/``bdense``), the threshold is
   rounded to the integer it really is: ``x >= t' <=> x >= ceil(t')`` and
   ``x <= t' <=> x <= floor(t')``, so the next layer compares integers exactly.

The arithmetic runs in float64; PyTorch evaluates the unfolded chain in float32, so a value
that lands within float32 rounding of a threshold can decide its bit differently (see the
parity tests for how often this happens).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from runtime.registry import all_ops
from runtime.schema import Graph, Node

_NO_ACCUMULATOR_REACHES = 2**40  # |popcount sums| stay far below this


def _merge_affines(program: Graph) -> bool:
    producers, uses = program.producers(), program.use_counts()
    for node in program.nodes:
        if node.op != "affine":
            continue
        first = producers.get(node.inputs[0])
        if first is None or first.op != "affine" or uses[first.outputs[0]] != 1:
            continue
        s1, b1 = first.params["scale"].astype(np.float64), first.params["bias"].astype(np.float64)
        s2, b2 = node.params["scale"].astype(np.float64), node.params["bias"].astype(np.float64)
        node.params = {"scale": s1 * s2, "bias": b1 * s2 + b2}
        node.inputs = list(first.inputs)
        program.nodes.remove(first)
        return True
    return False


def _fold_into_quantize(program: Graph) -> bool:
    producers, uses = program.producers(), program.use_counts()
    for node in program.nodes:
        if node.op != "quantize":
            continue
        affine = producers.get(node.inputs[0])
        if affine is None or affine.op != "affine" or uses[affine.outputs[0]] != 1:
            continue
        source = producers.get(affine.inputs[0])
        node.params = fold_threshold(
            affine.params["scale"].astype(np.float64),
            affine.params["bias"].astype(np.float64),
            node.params["threshold"].astype(np.float64),
            node.params["sign"].astype(np.float64),
            integer_input=source is not None and all_ops()[source.op].integer_output,
        )
        node.inputs = list(affine.inputs)
        program.nodes.remove(affine)
        return True
    return False


def fold_threshold(
    scale: np.ndarray,
    bias: np.ndarray,
    threshold: np.ndarray,
    sign: np.ndarray,
    *,
    integer_input: bool,
) -> dict[str, np.ndarray]:
    """Threshold and sign on ``x`` equivalent to ``s*(scale*x + bias) >= s*t`` (see module doc).

    With ``integer_input`` the division and rounding are done in exact rational arithmetic, so
    the integer threshold is right even where ``(t - b)/a`` lands on an integer.
    """
    new_sign = np.where(scale < 0, -sign, sign)
    constant_bit = sign * bias >= sign * threshold
    new_t = np.empty(scale.shape, dtype=np.float64)
    for c in range(scale.shape[0]):
        if scale[c] == 0:
            new_t[c] = -np.inf if constant_bit[c] else np.inf
            new_sign[c] = 1.0
        elif integer_input:
            exact = (Fraction(float(threshold[c])) - Fraction(float(bias[c]))) / Fraction(
                float(scale[c])
            )
            if abs(exact) > _NO_ACCUMULATOR_REACHES:
                new_t[c] = math.inf if exact > 0 else -math.inf  # same bits, fits a float
            else:
                new_t[c] = math.ceil(exact) if new_sign[c] > 0 else math.floor(exact)
        else:
            new_t[c] = (threshold[c] - bias[c]) / scale[c]
    return {"threshold": new_t, "sign": new_sign.astype(np.int8)}


def fold(program: Graph) -> Graph:
    """Apply both rewrites to a fixed point; returns the same (mutated) program."""
    while _merge_affines(program) or _fold_into_quantize(program):
        pass
    _drop_unread_values(program)
    return program


def _drop_unread_values(program: Graph) -> None:
    live = {spec.name for spec in program.outputs}
    kept: list[Node] = []
    for node in reversed(program.nodes):
        if any(out in live for out in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    program.nodes = kept[::-1]
    program.values = {k: v for k, v in program.values.items() if k in live}
