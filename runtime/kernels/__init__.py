"""Compute kernels of the packed-model runtime (numpy + numba only; never torch).

Data layout (docs/IR.md): float activations are float32 NHWC (rank 4) or [N, F] (rank 2);
binary activations are bits, uint64 with channels packed along the last axis
([N, H, W, ceil(C/64)]; bit j of word w = channel 64*w + j; bit 1 = +1; padding bits 0).

Every layer kernel works in two steps: ``prepare_*`` once at load time (validates the
parameters, raising ``runtime.errors.InvalidModelError``, and re-lays out the weights for
speed), then the call per inference (validates the activations, raising
``runtime.errors.InputError``). Each call takes an optional ``Epilogue`` fused into the
kernel's store, and ``residual=`` / ``out=`` keywords:

    y = acc * scale[o] + bias[o]          (make_epilogue(O, scale=, bias=))
    y = y + residual[..., o]              (call keyword residual=, float32 of the output shape)
    y = prelu / rprelu(y)                 (make_epilogue(O, prelu=w) or rprelu=(gamma, zeta, beta))
    bits = sign*y >= sign*threshold       (make_epilogue(O, quantize=(threshold, sign)))

With a quantizing epilogue the kernel returns packed bits (uint64[..., ceil(O/64)]) ready for
the next binary layer; otherwise float32[..., O]. Fused results are bit-identical to running
the unfused IR ops (affine, add, prelu/rprelu, quantize) one after another in float32.

API
---
``pack_bits(x f32[M, C], threshold f32[C], sign int8[C] | None) -> uint64[M, ceil(C/64)]``
``pack_bits_per_sample(x f32[N, P, C], threshold f32[N, C], sign | None) -> uint64[N, P, Cw]``
``make_epilogue(O, *, scale, bias, prelu, rprelu, quantize) -> Epilogue``
``prepare_bconv(weight_bits u64[O, kh, kw, Cw], in_channels, in_hw, kernel, stride, padding,
pad_value, *, popcount) -> BConvPlan``; ``bconv2d(plan, a_bits u64[N, H, W, Cw], epilogue,
*, residual, out)``: exact zero (pad_value 0) or +-1 padding, any kernel/stride, dilation 1,
groups 1; ``BConvCall(plan, epilogue)(a_bits, residual, out)`` the same with the plan and
epilogue bound once (what an execution plan calls). ``popcount``: the popcount strategy,
"vpopcntdq" (LLVM's own ctpop loops; ``vpopcntq`` on AVX-512 VPOPCNTDQ) or "avx2"
(nibble-table ``vpshufb`` intrinsics with byte-count accumulators), both exact on any host;
None: chosen from numba's target features (``NUMBA_CPU_FEATURES`` or the host's), overridden
by ``$BINARIZE_POPCOUNT`` (``runtime.kernels.bconv``).
``prepare_bdense(weight_bits u64[O, Fw], in_features, *, popcount) -> BConvPlan``;
``bdense(plan, a_bits u64[N, Fw], epilogue, *, residual, out)``; ``BDenseCall(plan,
epilogue)`` bound once.
``prepare_conv2d(weight f32[O, C/g, kh, kw], in_channels, in_hw, stride, padding, dilation,
groups) -> ConvPlan``; ``conv2d(plan, x f32[N, H, W, C], epilogue, *, residual, out)``
(conv bias: put it in the epilogue's bias). groups == 1 convs with K = kh*kw*C <= 512 run
the direct FMA micro-kernel (``uses_direct``, runtime/kernels/conv_direct.py), the others
im2col + BLAS per tile.
``prepare_conv_maxpool(conv_plan, kernel, stride, padding, out_hw) -> ConvMaxPoolPlan | None``
(None unless the conv takes the direct path); ``conv2d_maxpool(plan, x, epilogue, quantize)``:
the conv with its epilogue, then a max pool (dilation 1) of its output, and optionally the
pooled floats' bits, without storing the conv output (runtime/kernels/conv_pool.py).
``prepare_dense(weight f32[O, F]) -> DensePlan``; ``dense(plan, x f32[N, F], epilogue, *,
residual, out)`` (linear bias: the epilogue's bias).
``popcount64(word)``: the ``llvm.ctpop.i64`` intrinsic, for other nopython kernels.

Threads: the parallel kernels use numba's ``prange`` pool (``numba.set_num_threads``); the float
GEMMs use numpy's BLAS, whose thread count ``runtime.threads`` sets around ``Model.predict``.

The threading layer is numba's TBB (``runtime.threads`` says why: fork safety, steadier
medians on busy cores). Its idle workers spin for a while after each parallel region, which
keeps the next kernel's start cheap but competes with a multi-threaded BLAS call that
follows; hence OpenBLAS runs one thread while a model predicts (``runtime.threads``).

Every kernel is compiled with ``cache=True`` (set ``NUMBA_CACHE_DIR`` to a writable
directory); all layers share one specialization per kernel. numba's cache does not notice
edits to a helper inlined from another file (``finish_rows``, ``finish_popcounts_rows``,
``pack_at``, the ``epilogue_word`` intrinsic of ``epilogue_word.py``, the ``patch_popcounts*``
intrinsics of ``popcount.py``, the ``fma_block*`` intrinsics of ``fma.py``, their shared
helpers in ``intrinsics.py``): after changing one,
delete the cache directory.
"""

from runtime.kernels.bconv import BConvCall, BConvPlan, bconv2d, prepare_bconv
from runtime.kernels.conv import ConvPlan, conv2d, prepare_conv2d, uses_direct
from runtime.kernels.conv_direct import scratch_floats as direct_scratch_floats
from runtime.kernels.conv_pool import ConvMaxPoolPlan, conv2d_maxpool, prepare_conv_maxpool
from runtime.kernels.dense import (
    BDenseCall,
    DensePlan,
    bdense,
    dense,
    prepare_bdense,
    prepare_dense,
)
from runtime.kernels.epilogue import Epilogue, make_epilogue
from runtime.kernels.pack import pack_bits, pack_bits_per_sample, words_for
from runtime.kernels.popcount import popcount64

__all__ = [
    "BConvCall",
    "BConvPlan",
    "BDenseCall",
    "ConvMaxPoolPlan",
    "ConvPlan",
    "DensePlan",
    "Epilogue",
    "bconv2d",
    "bdense",
    "conv2d",
    "conv2d_maxpool",
    "dense",
    "direct_scratch_floats",
    "make_epilogue",
    "pack_bits",
    "pack_bits_per_sample",
    "popcount64",
    "prepare_bconv",
    "prepare_bdense",
    "prepare_conv2d",
    "prepare_conv_maxpool",
    "prepare_dense",
    "uses_direct",
    "words_for",
]
