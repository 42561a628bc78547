"""Dense layers: float (numpy BLAS) and binary (the binary conv kernel on a 1x1 image).

Float: y = x @ W.T, then the fused epilogue (bias is the epilogue's bias).
Binary: acc[n, o] = F - 2 * popcount(a[n] XOR w[o]) over ceil(F/64) words, exact integers,
then the fused epilogue; it is a 1x1 binary convolution of a 1x1 image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import InvalidModelError
from runtime.kernels.bconv import BConvCall, BConvPlan, prepare_bconv
from runtime.kernels.calls import check_call, check_epilogue, check_input
from runtime.kernels.epilogue import Epilogue, apply_epilogue
from runtime.kernels.pack import words_for


@dataclass(frozen=True)
class DensePlan:
    """A float dense layer: ``weights_t`` f32[F, O] (W transposed, contiguous)."""

    in_features: int
    out_features: int
    weights_t: np.ndarray


def prepare_dense(weight: np.ndarray) -> DensePlan:
    """Prepare a PyTorch linear weight f32[O, F] for ``dense``."""
    weight = np.asarray(weight)
    if weight.dtype != np.float32 or weight.ndim != 2 or min(weight.shape) < 1:
        raise InvalidModelError(
            f"dense weight must be float32[O, F], got {weight.dtype}{list(weight.shape)}."
        )
    return DensePlan(weight.shape[1], weight.shape[0], np.ascontiguousarray(weight.T))


def dense(
    plan: DensePlan,
    x: np.ndarray,
    epilogue: Epilogue | None = None,
    *,
    residual: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """y = x @ W.T for x f32[N, F], then the epilogue: float32[N, O] or uint64[N, ceil(O/64)]."""
    epilogue = check_call(
        "dense", x, np.float32, (plan.in_features,), epilogue, plan.out_features
    )
    y = x @ plan.weights_t
    return apply_epilogue(y, epilogue, y.shape, residual, out)


def prepare_bdense(
    weight_bits: np.ndarray, in_features: int, *, popcount: str | None = None
) -> BConvPlan:
    """Prepare packed binary weights uint64[O, ceil(F/64)] for ``bdense``.

    ``popcount``: the binary conv's strategy ("vpopcntdq" | "avx2"); None picks
    ``default_popcount`` of a 1x1 output, "vpopcntdq" unless ``$BINARIZE_POPCOUNT`` says.
    """
    weight_bits = np.asarray(weight_bits)
    if weight_bits.dtype != np.uint64 or weight_bits.ndim != 2 \
            or weight_bits.shape[1] != words_for(in_features):
        raise InvalidModelError(
            f"binary dense weight must be uint64[O, {words_for(in_features)}] for "
            f"{in_features} input features, got {weight_bits.dtype}{list(weight_bits.shape)}."
        )
    return prepare_bconv(weight_bits[:, None, None, :], in_features, (1, 1), 1,
                         popcount=popcount)


class BDenseCall:
    """``bdense`` of one plan and one epilogue, bound once (``BConvCall`` on a 1x1 image)."""

    def __init__(self, plan: BConvPlan, epilogue: Epilogue | None = None) -> None:
        self._conv = BConvCall(plan, check_epilogue("binary dense", epilogue,
                                                    plan.out_channels))
        self._trailing = (words_for(plan.in_channels),)

    def __call__(
        self, a_bits: np.ndarray, residual: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """See ``bdense``."""
        check_input("binary dense", a_bits, np.uint64, self._trailing)
        n_batch = a_bits.shape[0]
        flat = (n_batch, self._conv.plan.out_channels)
        if isinstance(residual, np.ndarray) and residual.shape == flat:
            residual = residual.reshape(n_batch, 1, 1, -1)
        if isinstance(out, np.ndarray) and out.ndim == 2 and out.flags.c_contiguous:
            out = out.reshape(n_batch, 1, 1, -1)
        result = self._conv(a_bits.reshape(n_batch, 1, 1, -1), residual, out)
        return result.reshape(n_batch, -1)


def bdense(
    plan: BConvPlan,
    a_bits: np.ndarray,
    epilogue: Epilogue | None = None,
    *,
    residual: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Binary dense layer on packed a_bits uint64[N, ceil(F/64)].

    Returns float32[N, O] (epilogue of F - 2*popcount(a XOR w)) or uint64[N, ceil(O/64)].
    Calling one plan with one epilogue many times: bind them once, ``BDenseCall``.
    """
    return BDenseCall(plan, epilogue)(a_bits, residual, out)
