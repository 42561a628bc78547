"""The fused epilogue of 64 consecutive channels of one pixel as one block of LLVM vector IR,
and the max pool of 64 channels of one output pixel that a fused conv + max pool writes
(``window_max_word``, runtime/kernels/conv_pool.py).

``epilogue_word`` is what ``finish_rows`` (runtime/kernels/epilogue.py) runs for every whole
64-channel word of a pixel; the channels past the last whole word go through its scalar
loops. For channels c = column + j, j < 64, with the table rows of ``make_epilogue``:

    y_j = values[b + j] * scale[c] + bias[c]                   (affine: fmul, then fadd)
    y_j = y_j + residual[rb + j]                               if add_residual
    y_j = (y_j - gamma[c] if y_j >= gamma[c]
           else beta[c] * (y_j - gamma[c])) + zeta[c]          if rprelu
    out[ob + j] = y_j                                          if store
    bit j of the result = y_j * sign[c] >= signed_threshold[c] if compare (else the result is 0)

Each line is one IEEE float32 operation per lane in the order of the unfused ops (no FMA
contraction, as numba compiles the scalar loops), so the values and bits are those of the
scalar epilogue, bit for bit (tests/runtime/test_epilogue_word.py). A NaN compares false, as
in the scalar loops: RPReLU takes its negative side, the bit is 0.

Why IR and not numba loops: the scalar loops run once per pixel over its channels, and LLVM
wraps each such short loop in runtime alias checks and a remainder loop; with three loops per
pixel that setup cost more than the arithmetic (a 64-channel, 56x56 ReActNet block epilogue
measured 0.13-0.16 ms in loops, 0.09-0.10 ms here, the same bits). Here the 64 lanes are
eight AVX2 registers, the flags are branches around whole vector blocks, and nothing is
checked: the caller guarantees that every index it passes is in bounds.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.intrinsics import is_c_array, widen

# rows of the epilogue table (the same numbers as runtime/kernels/epilogue.py's constants,
# which import them from here so that both name one layout)
SCALE, BIAS, GAMMA, ZETA, BETA, SIGN, SIGNED_THRESHOLD = range(7)
WORD_LANES = 64
F32 = types.float32


class _LaneIO:
    """What both intrinsics' code generators need: 64-lane float32 pointers into the flat
    arrays among ``args`` and the table's rows at a column."""

    def __init__(self, context, builder, signature, args, table_index: int, column) -> None:
        self.context, self.builder = context, builder
        self.types, self.args = signature.args, args
        self.i64 = ir.IntType(64)
        self.lanes = ir.VectorType(ir.FloatType(), WORD_LANES)
        table = self.array(table_index)
        self.table_data = table.data
        self.table_columns = cgutils.unpack_tuple(builder, table.shape)[1]
        self.column = widen(self.builder, column)

    def flag(self, value):
        if value.type.width == 1:
            return value
        return self.builder.icmp_unsigned("!=", value, ir.Constant(value.type, 0))

    def array(self, index):
        return self.context.make_array(self.types[index])(self.context, self.builder,
                                                          self.args[index])

    def pointer(self, index, at):
        """Pointer to 64 lanes of flat array argument ``index`` from element ``at``."""
        element = self.builder.gep(self.array(index).data, [widen(self.builder, at)])
        return self.builder.bitcast(element, self.lanes.as_pointer())

    def row(self, k):
        """Lanes column .. column + 63 of table row k."""
        builder = self.builder
        at = builder.add(builder.mul(ir.Constant(self.i64, k), self.table_columns), self.column)
        element = builder.gep(self.table_data, [at])
        return builder.load(builder.bitcast(element, self.lanes.as_pointer()), align=4)

    def bits(self, values, compare):
        """The uint64 of ``values * sign >= signed_threshold`` (0 unless ``compare``)."""
        builder = self.builder
        word = cgutils.alloca_once_value(builder, ir.Constant(self.i64, 0))
        with builder.if_then(self.flag(compare)):
            signed = builder.fmul(values, self.row(SIGN))
            mask = builder.fcmp_ordered(">=", signed, self.row(SIGNED_THRESHOLD))
            builder.store(builder.bitcast(mask, self.i64), word)
        return builder.load(word)


@intrinsic
def epilogue_word(typingctx, values, values_base, table, column, residual, residual_base,
                  add_residual, rprelu, out, out_base, store, compare):
    """The epilogue of channels column .. column + 63 of one pixel (see the module docstring);
    returns the uint64 of their bits (0 unless ``compare``). ``values``, ``residual``,
    ``out`` f32[:] C (flat views of the caller's rows), ``table`` f32[7, O] C; the bases are
    flat element indices, the flags booleans. Nopython only; nothing is bounds-checked."""
    if not (is_c_array(values, 1, F32) and is_c_array(table, 2, F32)
            and is_c_array(residual, 1, F32) and is_c_array(out, 1, F32)):
        return None
    if not all(isinstance(ty, types.Integer)
               for ty in (values_base, column, residual_base, out_base)):
        return None
    if not all(isinstance(ty, types.Boolean) for ty in (add_residual, rprelu, store, compare)):
        return None

    def codegen(context, builder, signature, args):
        (_, values_at, _, column_v, _, residual_at, add_residual_v, rprelu_v, _, out_at,
         store_v, compare_v) = args
        io = _LaneIO(context, builder, signature, args, table_index=2, column=column_v)
        flag, pointer, row = io.flag, io.pointer, io.row
        y = builder.fadd(builder.fmul(builder.load(pointer(0, values_at), align=4), row(SCALE)),
                         row(BIAS))
        slot = cgutils.alloca_once_value(builder, y)
        with builder.if_then(flag(add_residual_v)):
            shortcut = builder.load(pointer(4, residual_at), align=4)
            builder.store(builder.fadd(builder.load(slot), shortcut), slot)
        with builder.if_then(flag(rprelu_v)):
            y = builder.load(slot)
            gamma = row(GAMMA)
            shifted = builder.fsub(y, gamma)
            negative = builder.fmul(row(BETA), shifted)
            above = builder.fcmp_ordered(">=", y, gamma)
            builder.store(builder.fadd(builder.select(above, shifted, negative), row(ZETA)), slot)
        with builder.if_then(flag(store_v)):
            builder.store(builder.load(slot), pointer(8, out_at), align=4)
        return io.bits(builder.load(slot), compare_v)

    signature = types.uint64(values, types.int64, table, types.int64, residual, types.int64,
                             types.boolean, types.boolean, out, types.int64, types.boolean,
                             types.boolean)
    return signature, codegen


@intrinsic
def window_max_word(typingctx, source, taps, count, table, column, out, out_base, compare):
    """The max pool of channels column .. column + 63 of one output pixel over ``count``
    taps: with v_k = source[taps[k] + column + j],

        m_j = max(... max(max(-inf, v_0), v_1) ..., v_{count-1}),   max(a, v) = v if v > a else a

    (the fold of runtime/ops/pooling.py's max pool, in the same tap order: a NaN tap is
    skipped, of +0 and -0 the first one stays), stored to out[out_base + j]; returns the
    uint64 of ``m_j * sign[column + j] >= signed_threshold[column + j]`` from ``table`` f32[7,
    O] (0 unless ``compare``). ``source``, ``out`` f32[:] C, ``taps`` i64[:] C (flat element
    indices of each tap's channel 0). Nopython only; nothing is bounds-checked."""
    if not (is_c_array(source, 1, F32) and is_c_array(table, 2, F32) and is_c_array(out, 1, F32)
            and is_c_array(taps, 1, types.int64)):
        return None
    if not all(isinstance(ty, types.Integer) for ty in (count, column, out_base)) \
            or not isinstance(compare, types.Boolean):
        return None

    def codegen(context, builder, signature, args):
        _, _, count_v, _, column_v, _, out_at, compare_v = args
        io = _LaneIO(context, builder, signature, args, table_index=3, column=column_v)
        taps_data = io.array(1).data
        acc = cgutils.alloca_once_value(
            builder, ir.Constant(io.lanes, [ir.Constant(ir.FloatType(), float("-inf"))]
                                 * WORD_LANES))
        with cgutils.for_range(builder, widen(builder, count_v)) as loop:
            tap = builder.load(builder.gep(taps_data, [loop.index]))
            v = builder.load(io.pointer(0, builder.add(tap, io.column)), align=4)
            current = builder.load(acc)
            builder.store(builder.select(builder.fcmp_ordered(">", v, current), v, current), acc)
        result = builder.load(acc)
        builder.store(result, io.pointer(5, out_at), align=4)
        return io.bits(result, compare_v)

    signature = types.uint64(source, taps, types.int64, table, types.int64, out, types.int64,
                             types.boolean)
    return signature, codegen
