"""Population count of a 64-bit word as an LLVM intrinsic, callable from nopython code.

``np.bitwise_count`` does not compile in numba 0.68's nopython mode, and a table or bit-trick
popcount hides the operation from LLVM. Emitting ``llvm.ctpop.i64`` directly lets LLVM's loop
vectorizer turn a loop of ``popcount64(a ^ w[o])`` into the widest popcount the host offers:
``vpopcntq`` on CPUs with AVX-512 VPOPCNTDQ (Zen 4, Ice Lake and later), the AVX2
``vpshufb``/``vpsadbw`` nibble-table sequence elsewhere.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


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
