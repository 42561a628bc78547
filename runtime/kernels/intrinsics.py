"""Helpers shared by the runtime's LLVM intrinsics (popcount.py, fma.py, pack.py,
epilogue_word.py): the typing check of their array arguments, index widening, and the
operands of the register-blocked micro-kernels.

numba's cache does not see edits here (the intrinsics are inlined into the kernels that
call them): after changing this file, delete the cache directory.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils


def is_c_array(ty, ndim: int, dtype=None) -> bool:
    """True when the numba type ``ty`` is a C-contiguous array of rank ``ndim`` (and of
    ``dtype`` when given): the layout every intrinsic indexes as flat memory."""
    return isinstance(ty, types.Array) and ty.ndim == ndim and ty.layout == "C" \
        and (dtype is None or ty.dtype == dtype)


def widen(builder, value):
    """An integer LLVM value as i64 (sign-extended), for address arithmetic."""
    i64 = ir.IntType(64)
    return builder.sext(value, i64) if value.type.width < 64 else value


def block_operands(context, builder, offsets, weights, o, base, step, pixels):
    """Shared operands of the register-blocked intrinsics (the ``patch_popcounts*`` of
    popcount.py and ``fma_block*`` of fma.py): the offset table's data pointer, the weight
    array, the first element of weight block (row) o, and the first element of each of
    ``pixels`` pixels, ``base + p * step``. ``offsets`` and ``weights`` are (numba type, LLVM
    value) pairs."""
    i64 = ir.IntType(64)
    offsets_data = context.make_array(offsets[0])(context, builder, offsets[1]).data
    weights_array = context.make_array(weights[0])(context, builder, weights[1])
    columns = cgutils.unpack_tuple(builder, weights_array.shape)[1]
    block_start = builder.mul(o, columns)
    bases = [builder.add(base, builder.mul(step, ir.Constant(i64, p))) for p in range(pixels)]
    return offsets_data, weights_array, block_start, bases
