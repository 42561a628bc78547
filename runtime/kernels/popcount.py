"""Population count of a 64-bit word as an LLVM intrinsic, callable from nopython code.

``np.bitwise_count`` does not compile in numba 0.68's nopython mode, and a table or bit-trick
popcount hides the operation from LLVM. Emitting ``llvm.ctpop.i64`` directly lets LLVM's loop
vectorizer turn a loop of ``popcount64(a ^ w[o])`` into the widest popcount the host offers:
``vpopcntq`` on CPUs with AVX-512 VPOPCNTDQ (Zen 4, Ice Lake and later), the AVX2
``vpshufb``/``vpsadbw`` nibble-table sequence elsewhere.

The binary conv's "avx2" strategy (``runtime.kernels.bconv``) uses the ``patch_popcounts*``
intrinsics below instead: hand-vectorized LLVM IR over <4 x i64> vectors of output
channels that keeps per-byte counts and sums them horizontally once per up to
BYTE_COUNT_WORDS words. With the input word a and the weight w both split into nibbles
beforehand (a_lo = a & 0x0F.., a_hi = (a >> 4) & 0x0F.., likewise w), per byte

    popcount(a ^ w) = T[a_lo ^ w_lo] + T[a_hi ^ w_hi],   T[i] = popcount(i), i < 16,

so one 256-bit vector of 4 channels costs 2 vpxor + 2 vpshufb + 2 vpaddb = 6 vector uops,
where LLVM's own v4i64 ctpop lowering costs 9 per lone word (vpxor, vpand, vpsrlw, vpand,
2 vpshufb, vpaddb, vpsadbw, vpaddq) and 8.5 in the conv's pass of four words (LLVM adds the
four byte counts before one vpsadbw). Each word adds at most 4 + 4 = 8 to a byte. Off AVX2
the same IR uses ``llvm.ctpop.v32i8`` for T (the same numbers).
"""

from __future__ import annotations

import platform

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.extending import intrinsic

from runtime.kernels.intrinsics import block_operands, is_c_array


@intrinsic
def popcount64(typingctx, word):
    """Number of set bits of a 64-bit integer ``word``, as a uint64 (nopython only).

    For +-1 vectors a, w of length K packed as bits (bit 1 = +1),
    ``dot(a, w) = K - 2 * popcount(a_bits ^ w_bits)``.
    """
    if not isinstance(word, types.Integer) or word.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(word), codegen


# Byte counts accumulate at most this many popcounts of 64-bit words: each byte's count is
# <= 8 per word, so 31 words keep every byte <= 248 < 256 and no carry crosses into the next
# byte.
BYTE_COUNT_WORDS = 31
VECTOR_LANES = 4  # 64-bit output channels per <4 x i64> vector (one 256-bit AVX2 register)
# vectors of output channels per weight block (one call's stream of weight loads): each
# broadcast input word serves all of them; 4 was faster than 1 and 2 here (Zen 3)
BLOCK_VECTORS = 4
BLOCK_CHANNELS = VECTOR_LANES * BLOCK_VECTORS
LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F


def _byte_sums(builder, byte_counts):
    """<32 x i8> byte counts (each <= 248) -> <4 x i64>: the sum of each lane's 8 bytes.

    One ``vpsadbw`` against zero on AVX2 targets; elsewhere generic shifts and adds, exact
    because every partial sum stays below 2**16: s = (v & m8) + ((v >> 8) & m8) (four
    16-bit sums), s += s >> 16, s += s >> 32, s & 0xFFFF.
    """
    lane = ir.VectorType(ir.IntType(64), VECTOR_LANES)
    if has_pshufb():
        psadbw = builder.module.declare_intrinsic(
            "llvm.x86.avx2.psad.bw", fnty=ir.FunctionType(lane, [byte_counts.type] * 2))
        return builder.call(psadbw, [byte_counts, ir.Constant(byte_counts.type, None)])

    def splat(value):
        return ir.Constant(lane, [ir.Constant(ir.IntType(64), value)] * VECTOR_LANES)

    v = builder.bitcast(byte_counts, lane)
    m8 = splat(0x00FF00FF00FF00FF)
    s = builder.add(builder.and_(v, m8), builder.and_(builder.lshr(v, splat(8)), m8))
    s = builder.add(s, builder.lshr(s, splat(16)))
    s = builder.add(s, builder.lshr(s, splat(32)))
    return builder.and_(s, splat(0xFFFF))


def has_pshufb() -> bool:
    """True when numba compiles for x86-64 with AVX2 (``vpshufb`` on 256-bit vectors)."""
    return platform.machine().lower() in ("x86_64", "amd64") and bool(
        target_features().get("avx2"))


def target_features() -> dict[str, bool]:
    """The CPU features numba compiles for: ``NUMBA_CPU_FEATURES`` when set (numba's
    ``config.CPU_FEATURES``), else the host's (llvmlite). A feature the string does not name
    counts as absent (features implied only by ``NUMBA_CPU_NAME`` are not seen)."""
    spec = numba_config.CPU_FEATURES
    if spec is None:
        spec = llvm_binding.get_host_cpu_features().flatten()
    features: dict[str, bool] = {}
    for item in str(spec).split(","):
        item = item.strip()
        if len(item) > 1 and item[0] in "+-":
            features[item[1:]] = item[0] == "+"
    return features


def _nibble_lookup(builder, nibbles):
    """<32 x i8> nibbles (each < 16) -> their popcounts, one ``vpshufb`` on AVX2 targets
    (table lookup, no masking: the indices' high bits are known zero), else
    ``llvm.ctpop.v32i8`` (the same numbers, whatever the target lowers it to)."""
    bytes_ty = nibbles.type
    if has_pshufb():
        pshufb = builder.module.declare_intrinsic(
            "llvm.x86.avx2.pshuf.b", fnty=ir.FunctionType(bytes_ty, [bytes_ty, bytes_ty]))
        table = ir.Constant(bytes_ty, [bin(i % 16).count("1") for i in range(32)])
        return builder.call(pshufb, [table, nibbles])
    ctpop = builder.module.declare_intrinsic(
        "llvm.ctpop.v32i8", fnty=ir.FunctionType(bytes_ty, [bytes_ty]))
    return builder.call(ctpop, [nibbles])


def _patch_popcounts_codegen(pixels, first_vector, stop_vector):
    """LLVM IR of a ``patch_popcounts*`` intrinsic: ``pixels`` pixels, the block's vectors
    [first_vector, stop_vector) (see the comment above ``patch_popcounts_bytes``)."""
    vectors = range(first_vector, stop_vector)

    def codegen(context, builder, signature, args):
        words, base, step, offsets, count, weights, o, acc = args
        words_ty, _, _, offsets_ty, _, weights_ty, _, acc_ty = signature.args
        i64 = ir.IntType(64)
        lane = ir.VectorType(i64, VECTOR_LANES)
        bytes_ty = ir.VectorType(ir.IntType(8), 8 * VECTOR_LANES)
        words_array = context.make_array(words_ty)(context, builder, words)
        words_data = words_array.data
        half_offset = (ir.Constant(i64, 0), cgutils.unpack_tuple(builder, words_array.shape)[1])
        offsets_data, weights_array, block_start, bases = block_operands(
            context, builder, (offsets_ty, offsets), (weights_ty, weights), o, base, step, pixels)
        zero_bytes = ir.Constant(bytes_ty, None)
        cells = [(p, v) for p in range(pixels) for v in vectors]
        totals = {c: cgutils.alloca_once_value(builder, ir.Constant(lane, None)) for c in cells}
        counts = {c: cgutils.alloca_once_value(builder, zero_bytes) for c in cells}
        group = ir.Constant(i64, BYTE_COUNT_WORDS)
        groups = builder.udiv(builder.add(count, ir.Constant(i64, BYTE_COUNT_WORDS - 1)), group)
        undef_lane = ir.Constant(lane, None)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), VECTOR_LANES), [0] * VECTOR_LANES)
        def run_words(start, stop):
            """The byte counts of words start .. stop (at most one group), then their sums."""
            for c in cells:
                builder.store(zero_bytes, counts[c])
            with cgutils.for_range_slice(builder, start, stop, ir.Constant(i64, 1)) as (k, _):
                offset = builder.load(builder.gep(offsets_data, [k]))
                row = builder.add(block_start,
                                  builder.mul(k, ir.Constant(i64, 2 * BLOCK_CHANNELS)))
                w = {}
                for half in (0, 1):  # the low nibbles' vectors, then the high nibbles'
                    for v in vectors:
                        at = builder.add(row, ir.Constant(
                            i64, half * BLOCK_CHANNELS + v * VECTOR_LANES))
                        w_ptr = builder.bitcast(builder.gep(weights_array.data, [at]),
                                                lane.as_pointer())
                        w[half, v] = builder.load(w_ptr, align=8)
                for p in range(pixels):
                    at = builder.add(bases[p], offset)
                    a_parts = []
                    for half in (0, 1):
                        a = builder.load(builder.gep(
                            words_data, [builder.add(at, half_offset[half])]))
                        a_parts.append(builder.shuffle_vector(
                            builder.insert_element(undef_lane, a, ir.Constant(ir.IntType(32), 0)),
                            undef_lane, splat_mask))
                    for v in vectors:
                        cell = counts[p, v]
                        total = builder.load(cell)
                        for half in (0, 1):
                            x = builder.bitcast(builder.xor(a_parts[half], w[half, v]), bytes_ty)
                            total = builder.add(total, _nibble_lookup(builder, x))
                        builder.store(total, cell)
            return {c: _byte_sums(builder, builder.load(counts[c])) for c in cells}

        # a patch of at most one group (a 64- or 128-channel 3x3 conv: 9 or 18 words) takes
        # the loop without the groups around it: no running totals to carry and spill
        with builder.if_else(builder.icmp_signed("<=", count, group)) as (one_group, several):
            with one_group:
                reduced = run_words(ir.Constant(i64, 0), count)
                for c in cells:
                    builder.store(reduced[c], totals[c])
            with several, cgutils.for_range(builder, groups) as outer:
                start = builder.mul(outer.index, group)
                stop = builder.add(start, group)
                stop = builder.select(builder.icmp_signed("<", stop, count), stop, count)
                reduced = run_words(start, stop)
                for c in cells:
                    builder.store(builder.add(builder.load(totals[c]), reduced[c]),
                                  totals[c])
        acc_array = context.make_array(acc_ty)(context, builder, acc)
        acc_columns = cgutils.unpack_tuple(builder, acc_array.shape)[1]
        first = builder.mul(o, ir.Constant(i64, BLOCK_CHANNELS))
        for p, v in cells:
            at = builder.add(builder.mul(ir.Constant(i64, p), acc_columns),
                             builder.add(first, ir.Constant(i64, v * VECTOR_LANES)))
            out_ptr = builder.bitcast(builder.gep(acc_array.data, [at]), lane.as_pointer())
            builder.store(builder.load(totals[p, v]), out_ptr, align=8)
        return context.get_dummy_value()

    return codegen


def _patch_intrinsic(pixels: int, first_vector: int, stop_vector: int):
    """A ``patch_popcounts*`` intrinsic for ``pixels`` pixels and the block's vectors
    [first_vector, stop_vector)."""

    def typer(typingctx, words, base, step, offsets, count, weights, o, acc):
        arrays = (is_c_array(words, 2), is_c_array(offsets, 1), is_c_array(weights, 2),
                  is_c_array(acc, 2))
        if not all(arrays):
            return None
        signature = types.void(words, types.int64, types.int64, offsets, types.int64, weights,
                               types.int64, acc)
        return signature, _patch_popcounts_codegen(pixels, first_vector, stop_vector)

    return intrinsic(typer)


# patch_popcounts*(nibble_words, base, step, offsets, count, weights, o, acc), nopython only:
# for pixels p < P and the output channels j = BLOCK_CHANNELS * o + l of block o (l over the
# intrinsic's vectors, 4 channels each),
#
#     acc[p, j] = sum_{k < count} popcount(A[base + p * step + offsets[k]] ^ W[k, j])
#
# with A and W given split into nibbles: nibble_words u64[2, M] C holds A & LOW_NIBBLES and
# (A >> 4) & LOW_NIBBLES; weights u64[blocks, >= 2 * BLOCK_CHANNELS * count] C holds in row
# o, per patch word k, the block's BLOCK_CHANNELS words W[k, j] & LOW_NIBBLES, then the
# (W[k, j] >> 4) & LOW_NIBBLES. Per word and vector: two XORs with the broadcast input
# nibbles, two 16-entry table lookups (``_nibble_lookup``), two byte adds; every
# BYTE_COUNT_WORDS words one horizontal byte sum (``_byte_sums``). offsets i64[:] C, acc
# u64[>= P, >= BLOCK_CHANNELS * (o + 1)] C. Nothing is bounds-checked.
patch_popcounts_bytes = _patch_intrinsic(2, 0, BLOCK_VECTORS)  # two pixels, whole block
patch_popcount_bytes = _patch_intrinsic(1, 0, BLOCK_VECTORS)  # one pixel, whole block
# four pixels, half of the block's vectors per call (8 accumulators fit the 16 registers)
patch_popcounts4_low = _patch_intrinsic(4, 0, BLOCK_VECTORS // 2)
patch_popcounts4_high = _patch_intrinsic(4, BLOCK_VECTORS // 2, BLOCK_VECTORS)
patch_popcounts3_low = _patch_intrinsic(3, 0, BLOCK_VECTORS // 2)  # three pixels, likewise
patch_popcounts3_high = _patch_intrinsic(3, BLOCK_VECTORS // 2, BLOCK_VECTORS)
