"""Register-blocked float32 multiply-accumulate as LLVM intrinsics, callable from nopython code.

The direct float convolution (``runtime.kernels.conv``) spends its time in one operation:
for a few output pixels p and a block of FMA_BLOCK output channels j,

    acc[row + p, col + j] = sum_{k < count} x[base + p*step + offsets[k]] * W[o, k*FMA_BLOCK + j]

(x the flat input, offsets the patch's element offsets from its first element, W the
weights of block o laid out tap-major, FMA_BLOCK channels per tap). Written as numba loops,
LLVM keeps the accumulators in memory or vectorizes the wrong axis; here they are explicit
<8 x float> values: per k, FMA_BLOCK / 8 weight vectors loaded once, one broadcast input
value per pixel, and ``pixels * FMA_BLOCK / 8`` ``llvm.fmuladd`` (one ``vfmadd231ps`` each
on a CPU with FMA3, a multiply and an add elsewhere). With 6 pixels and 16 channels that is
12 accumulators + 2 weight vectors + 1 broadcast = 15 of AVX2's 16 vector registers, and per
tap 12 FMAs against 8 loads, so the two FMA pipes, not the loads, set the pace: the classic
6x16 SGEMM micro-kernel shape, here reading its A operand in place (no im2col copy).

The sum runs in k order with one rounding per fused multiply-add, so it is deterministic,
but not bit-identical to another summation order (BLAS, PyTorch): float layers agree with
PyTorch to rounding, as every float kernel does.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.intrinsics import block_operands, is_c_array

FMA_LANES = 8  # float32 lanes of one 256-bit vector
FMA_BLOCK = 16  # output channels per weight block: two vectors
FMA_PIXELS = 6  # pixels of the main micro-kernel


def _fma_codegen(pixels: int):
    """LLVM IR of ``fma_block*`` for ``pixels`` pixels (see the comment above ``fma_block6``)."""
    vectors = FMA_BLOCK // FMA_LANES

    def codegen(context, builder, signature, args):
        x, base, step, offsets, count, weights, o, acc, row, col = args
        x_ty, _, _, offsets_ty, _, weights_ty, _, acc_ty, _, _ = signature.args
        i64 = ir.IntType(64)
        vector = ir.VectorType(ir.FloatType(), FMA_LANES)
        fmuladd = builder.module.declare_intrinsic(
            f"llvm.fmuladd.v{FMA_LANES}f32", fnty=ir.FunctionType(vector, [vector] * 3))
        x_data = context.make_array(x_ty)(context, builder, x).data
        offsets_data, weights_array, block_start, bases = block_operands(
            context, builder, (offsets_ty, offsets), (weights_ty, weights), o, base, step, pixels)
        cells = [(p, v) for p in range(pixels) for v in range(vectors)]
        sums = {c: cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for c in cells}
        undef = ir.Constant(vector, None)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), FMA_LANES), [0] * FMA_LANES)
        with cgutils.for_range(builder, count) as loop:
            k = loop.index
            offset = builder.load(builder.gep(offsets_data, [k]))
            at = builder.add(block_start, builder.mul(k, ir.Constant(i64, FMA_BLOCK)))
            w = [builder.load(builder.bitcast(
                builder.gep(weights_array.data, [builder.add(at, ir.Constant(i64, v * FMA_LANES))]),
                vector.as_pointer()), align=4) for v in range(vectors)]
            for p in range(pixels):
                value = builder.load(builder.gep(x_data, [builder.add(bases[p], offset)]))
                broadcast = builder.shuffle_vector(
                    builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0)),
                    undef, splat_mask)
                for v in range(vectors):
                    cell = sums[p, v]
                    builder.store(builder.call(fmuladd, [broadcast, w[v], builder.load(cell)]),
                                  cell)
        acc_array = context.make_array(acc_ty)(context, builder, acc)
        acc_columns = cgutils.unpack_tuple(builder, acc_array.shape)[1]
        for p, v in cells:
            at = builder.add(builder.mul(builder.add(row, ir.Constant(i64, p)), acc_columns),
                             builder.add(col, ir.Constant(i64, v * FMA_LANES)))
            pointer = builder.bitcast(builder.gep(acc_array.data, [at]), vector.as_pointer())
            builder.store(builder.load(sums[p, v]), pointer, align=4)
        return context.get_dummy_value()

    return codegen


def _fma_intrinsic(pixels: int):
    """A ``fma_block*`` intrinsic for ``pixels`` pixels."""

    def typer(typingctx, x, base, step, offsets, count, weights, o, acc, row, col):
        arrays = (is_c_array(x, 1, types.float32), is_c_array(offsets, 1, types.int64),
                  is_c_array(weights, 2, types.float32), is_c_array(acc, 2, types.float32))
        if not all(arrays):
            return None
        signature = types.void(x, types.int64, types.int64, offsets, types.int64, weights,
                               types.int64, acc, types.int64, types.int64)
        return signature, _fma_codegen(pixels)

    return intrinsic(typer)


# fma_block*(x, base, step, offsets, count, weights, o, acc, row, col), nopython only: for
# pixels p < P and j < FMA_BLOCK,
#
#     acc[row + p, col + j] = sum_{k < count} x[base + p * step + offsets[k]]
#                                             * weights[o, k * FMA_BLOCK + j]
#
# x f32[:] C (flat input), offsets i64[:] C, weights f32[blocks, >= count * FMA_BLOCK] C,
# acc f32[>= row + P, >= col + FMA_BLOCK] C. Nothing is bounds-checked: the caller keeps
# every index inside its arrays.
fma_block6 = _fma_intrinsic(FMA_PIXELS)
fma_block1 = _fma_intrinsic(1)  # a row's last pixels
