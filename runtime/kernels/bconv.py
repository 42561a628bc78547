"""Binary 2-D convolution on packed bits: direct, NHWC, fused epilogue.

For +-1 input a (channels packed 64 per uint64 word, C channels) and +-1 weights w, the
convolution ``F.conv2d`` of the +-1 tensors, with padding filled by ``pad_value``, is

    out[o] = sum over taps t inside the image of (C - 2 * popcount(a_t XOR w[o, t]))
           + pad_value * sum over taps t in the padding of sum_c w[o, t, c]

The kernel reads a copy of the input padded with whole words: 0 (all -1) for pad_value 0 and
-1, the C channel bits set (all +1) for pad_value +1. With P = popcount summed over all
kh * kw * Cw words of the patch, +-1 padding is then exact as it stands,
``out = kh * kw * C - 2 * P``; zero padding (PyTorch's and Larq Compute Engine's) subtracts,
at border pixels only, the precomputed popcount of the weights of each tap in the padding
(what a zero word XORs to) and counts only the valid taps:
``out = n_valid_taps * C - 2 * (P - sum over padded taps of popcount(w[o, t]))``.

Loop order: (batch, output row) in ``prange`` -> pairs of output columns -> the
patch's words -> output channels innermost. With fewer than 4 rows per thread, each row task
is split into equal shares of the output channels (multiples of 64, ``channel_splits`` of
runtime/kernels/geometry.py): a ResNet's 7x7 outputs, 7 rows at 4:3 over 2 threads, run as
14 tasks of half the channels (Bi-Real-18 at 2 threads 7.66 -> 7.02 and 9.46 -> 7.15 ms, min
of 5 alternating processes of 30 predicts each), and a binary dense layer at batch 1 shares
its outputs among the threads. The weights are re-laid out at plan time to
[kh * kw * Cw, O] (output channels contiguous), so the innermost loop is: broadcast word XOR
a contiguous weight vector, popcount, add; LLVM vectorizes it (``vpopcntq`` on AVX-512
VPOPCNTDQ, the ``vpshufb``/``vpsadbw`` sequence on AVX2). Two output pixels share each
weight load and four patch words share each accumulator update, which cuts the loads and
stores per popcount: that register blocking is what makes small channel counts fast. The
patch words are read in place (no im2col, no gather copy) through a per-call table of word
offsets from the patch's top-left word.

Popcount strategies (``BConvPlan.popcount``, chosen by ``prepare_bconv``; both give the same
integers on every host, one compiled kernel runs both):

- "vpopcntdq": the loops above. On AVX-512 VPOPCNTDQ one ``vpopcntq`` per vector.
- "avx2": blocks of BLOCK_CHANNELS (16) output channels, each with its weights stored
  contiguously per patch word and split into low and high nibbles, the input split the same
  way once per call (``_padded_nibbles``, a serial pass before the rows); for 4 pixels (then
  3, 2 or 1 at a row's end) the ``patch_popcounts*`` intrinsics of
  ``runtime.kernels.popcount`` run all patch words with the byte-count accumulators in
  registers: per 4-channel vector and word 2 vpxor + 2 vpshufb + 2 vpaddb, no vpsadbw (one
  horizontal byte sum per 31 words).

Default (``default_popcount``): "avx2" on an x86 target with AVX2 and without AVX-512
VPOPCNTDQ (the target numba compiles for: ``NUMBA_CPU_FEATURES`` when set, else the host),
except for single-pixel outputs (binary dense: the nibble-split weights are twice the
bytes, streamed once per sample); "vpopcntdq" elsewhere. ``$BINARIZE_POPCOUNT`` (vpopcntdq |
avx2) overrides the default for every plan; ``prepare_bconv(..., popcount=)`` for one.

Ceiling of each strategy on an AVX2-only core with 4 vector ALU pipes, 2 of which shuffle
(Zen 3): one vector is 4 channels x 64 bits = 256 binary MACs of one pixel. "vpopcntdq"
compiles (LLVM 22, znver3) to 68 vector uops per 8 vectors in its pass of four words: per
vector vpxor, 2 vpand, vpsrlw, 2 vpshufb, vpaddb, and LLVM already adds the four words'
byte counts before one vpsadbw + vpaddq per pixel: 8.5 uops, >= 2.125 cycles, <= 120.5
MACs/cycle. "avx2" needs 6 (2 vpxor, 2 vpshufb, 2 vpaddb; 48 per 8 vectors in its 4-pixel
loop): >= 1.5 cycles, <= 170.7 MACs/cycle (its 2 vpshufb on the 2 shuffle pipes need only
1 cycle). Loads, the epilogue and loop overhead come on top (``benchmarks/bench_layers.py``
reports the fraction of these ceilings reached).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from runtime.errors import InvalidModelError
from runtime.kernels.calls import check_epilogue, check_input
from runtime.kernels.epilogue import (
    Epilogue,
    _as_rows,
    check_residual,
    finish_popcounts_rows,
    finish_rows,
    output_buffers,
)
from runtime.kernels.geometry import channel_splits, conv_output_size, int_pair
from runtime.kernels.pack import words_for
from runtime.kernels.popcount import (
    BLOCK_CHANNELS,
    LOW_NIBBLES,
    patch_popcount_bytes,
    patch_popcounts3_high,
    patch_popcounts3_low,
    patch_popcounts4_high,
    patch_popcounts4_low,
    patch_popcounts_bytes,
    popcount64,
    target_features,
)
from runtime.threads import kernel_threads

# numba hoists the first pass's constant-index loads (offsets[0..3], weights[0..3]) out of the
# prange loop, where they run even when the patch has fewer than 4 words: the offset table and
# the weight rows are padded (with zeros, never used) to at least this many rows so that those
# loads stay in bounds.
MIN_PATCH_ROWS = 4
LAYER = "binary conv"
POPCOUNT_STRATEGIES = ("vpopcntdq", "avx2")
POPCOUNT_ENV = "BINARIZE_POPCOUNT"


@dataclass(frozen=True)
class BConvPlan:
    """A binary convolution prepared for one input size (see ``prepare_bconv``).

    ``weights`` ("vpopcntdq") uint64[R, O], R = max(kh * kw * Cw, 4): patch word
    k = (ky * kw + kx) * Cw + w, channel o (rows past kh * kw * Cw are zero padding, see
    MIN_PATCH_ROWS); ("avx2") uint64[ceil(O / 16), R * 2 * 16]: block b, patch word k holds
    the 16 words W[k, 16 b + l] & LOW_NIBBLES, then the 16 (W[k, 16 b + l] >> 4) &
    LOW_NIBBLES (channels past O zero).
    ``tap_ones`` uint64[kh, kw, O]: popcount of the weights of each tap (zero-padding fix).
    ``pad_word`` uint64[Cw]: the word written into the padding of the input copy.
    ``popcount``: the strategy, "vpopcntdq" or "avx2" (see the module docstring).
    """

    in_channels: int
    out_channels: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: int
    weights: np.ndarray
    tap_ones: np.ndarray
    pad_word: np.ndarray
    popcount: str = "vpopcntdq"


def default_popcount(out_hw: tuple[int, int] = (2, 2)) -> str:
    """The popcount strategy for a layer with output size ``out_hw`` on this target.

    ``$BINARIZE_POPCOUNT`` when set; else "avx2" on an AVX2 target without AVX-512 VPOPCNTDQ
    (numba's target: ``NUMBA_CPU_FEATURES`` when set, see ``target_features``), unless the
    output is a single pixel (a binary dense layer: every weight is read once per sample,
    and the avx2 layout's doubled weight bytes made it 1.1x slower); else "vpopcntdq".
    """
    override = os.environ.get(POPCOUNT_ENV)
    if override:
        if override not in POPCOUNT_STRATEGIES:
            raise InvalidModelError(
                f"{POPCOUNT_ENV} must be one of {', '.join(POPCOUNT_STRATEGIES)}, got "
                f"{override!r}."
            )
        return override
    features = target_features()
    if features.get("avx2") and not features.get("avx512vpopcntdq") and max(out_hw) > 1:
        return "avx2"
    return "vpopcntdq"


def padding_bits_clear(bits: np.ndarray, channels: int) -> bool:
    """True when every bit past ``channels`` in the last word of ``bits`` [..., Cw] is 0."""
    spare = words_for(channels) * 64 - channels
    if spare == 0:
        return True
    mask = np.uint64(((1 << spare) - 1) << (64 - spare))
    return not np.any(bits[..., -1] & mask)


def prepare_bconv(
    weight_bits: np.ndarray,
    in_channels: int,
    in_hw: tuple[int, int],
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    pad_value: int = 0,
    *,
    popcount: str | None = None,
) -> BConvPlan:
    """Re-lay out packed weights uint64[O, kh, kw, ceil(C/64)] for ``bconv2d`` on [H, W] inputs.

    ``pad_value``: 0 (zero padding, as ``F.conv2d`` on +-1 tensors), +1 or -1.
    ``popcount``: "vpopcntdq", "avx2" or None (``default_popcount(out_hw)``, from the
    target's features); both strategies give the same integers on any host.
    Raises InvalidModelError when the weights do not match the attributes.
    """
    kh, kw = int_pair(kernel, "kernel", 1, LAYER)
    sh, sw = int_pair(stride, "stride", 1, LAYER)
    ph, pw = int_pair(padding, "padding", 0, LAYER)
    height, width = int_pair(in_hw, "input size", 1, LAYER)
    cw = words_for(in_channels)
    weight_bits = np.asarray(weight_bits)
    if (weight_bits.dtype != np.uint64 or weight_bits.ndim != 4
            or weight_bits.shape[1:] != (kh, kw, cw) or weight_bits.shape[0] < 1):
        raise InvalidModelError(
            f"binary conv weight must be uint64[O, {kh}, {kw}, {cw}] for {in_channels} input "
            f"channels and kernel {kh}x{kw}, got {weight_bits.dtype}{list(weight_bits.shape)}."
        )
    if not padding_bits_clear(weight_bits, in_channels):
        raise InvalidModelError(
            f"binary conv weight has bits set past channel {in_channels} in its last word; "
            "padding bits must be 0 (docs/IR.md). Re-export the model with binarize.pack."
        )
    if pad_value not in (0, 1, -1):
        raise InvalidModelError(f"binary conv pad_value must be 0, 1 or -1, got {pad_value!r}.")
    out_hw = (conv_output_size(height, kh, sh, ph), conv_output_size(width, kw, sw, pw))
    if min(out_hw) < 1:
        raise InvalidModelError(
            f"binary conv with kernel {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw} has an "
            f"empty output on a {height}x{width} input."
        )
    if popcount is None:
        popcount = default_popcount(out_hw)
    if popcount not in POPCOUNT_STRATEGIES:
        raise InvalidModelError(
            f"binary conv popcount must be one of {', '.join(POPCOUNT_STRATEGIES)}, got "
            f"{popcount!r}."
        )
    patch_words = kh * kw * cw
    rows = max(patch_words, MIN_PATCH_ROWS)
    by_word = weight_bits.transpose(1, 2, 3, 0).reshape(patch_words, -1)
    if popcount == "avx2":
        blocks = -(-weight_bits.shape[0] // BLOCK_CHANNELS)
        staged = np.zeros((rows, blocks * BLOCK_CHANNELS), np.uint64)
        staged[:patch_words, :weight_bits.shape[0]] = by_word
        staged = staged.reshape(rows, blocks, BLOCK_CHANNELS).transpose(1, 0, 2)
        nibbles = np.uint64(LOW_NIBBLES)
        weights = _aligned_zeros((blocks, rows * 2 * BLOCK_CHANNELS))
        split = weights.reshape(blocks, rows, 2, BLOCK_CHANNELS)
        split[:, :, 0] = staged & nibbles
        split[:, :, 1] = (staged >> np.uint64(4)) & nibbles
    else:
        weights = _aligned_zeros((rows, weight_bits.shape[0]))
        weights[:patch_words] = by_word
    weight_bytes = np.ascontiguousarray(weight_bits).view(np.uint8)
    ones = np.unpackbits(weight_bytes, axis=3).sum(axis=3, dtype=np.int64)
    pad_word = np.zeros(cw, np.uint64)
    if pad_value == 1:
        pad_word[:] = np.uint64(2**64 - 1)
        pad_word[-1] >>= np.uint64(cw * 64 - in_channels)
    return BConvPlan(in_channels, weight_bits.shape[0], (height, width), out_hw, (kh, kw),
                     (sh, sw), (ph, pw), int(pad_value), weights,
                     np.ascontiguousarray(ones.transpose(1, 2, 0).astype(np.uint64)), pad_word,
                     popcount)


def _aligned_zeros(shape: tuple[int, int], alignment: int = 64) -> np.ndarray:
    """uint64 zeros whose data starts on a cache line: the kernel streams weight rows with
    full-width vector loads, and a row split across cache lines measured 10-20% slower."""
    count = shape[0] * shape[1]
    raw = np.zeros(count + alignment // 8, np.uint64)
    skip = (-raw.ctypes.data % alignment) // 8
    return raw[skip:skip + count].reshape(shape)


@njit(cache=True, inline="always")
def _padded_word(source, n, y, i, pad_h, pad_w, height, width, pad_word):
    """Word i of row y of sample n of the padded input, source u64[N, H, W * Cw]: the input's
    word inside the image, ``pad_word[i % Cw]`` in the padding."""
    cw = pad_word.shape[0]
    inner_start = pad_w * cw
    if pad_h <= y < pad_h + height and inner_start <= i < inner_start + width * cw:
        return source[n, y - pad_h, i - inner_start]
    return pad_word[i % cw]


@njit(cache=True, inline="always")
def _padded_words(a, pad_h, pad_w, pad_word):
    """a u64[N, H, W, Cw] padded with ``pad_word`` to [N, H + 2 pad_h, W + 2 pad_w, Cw], flat
    (a's own words when there is no padding)."""
    n_batch, height, width, cw = a.shape
    if pad_h == 0 and pad_w == 0:
        return a.reshape(-1)
    padded_h, padded_w = height + 2 * pad_h, width + 2 * pad_w
    source = a.reshape(n_batch, height, width * cw)
    words = np.empty(n_batch * padded_h * padded_w * cw, np.uint64)
    target = words.reshape(n_batch, padded_h, padded_w * cw)
    for n in range(n_batch):
        for y in range(padded_h):
            for i in range(padded_w * cw):
                target[n, y, i] = _padded_word(source, n, y, i, pad_h, pad_w, height, width,
                                               pad_word)
    return words


@njit(cache=True, inline="always")
def _padded_nibbles(a, pad_h, pad_w, pad_word):
    """The avx2 strategy's input: the padded words (``_padded_words``) split into nibbles,
    u64[2, N * Hp * Wp * Cw]: [0] each byte's low nibble (word & LOW_NIBBLES), [1] its high
    nibble ((word >> 4) & LOW_NIBBLES), ready to index a 16-entry table."""
    n_batch, height, width, cw = a.shape
    padded_h, padded_w = height + 2 * pad_h, width + 2 * pad_w
    source = a.reshape(n_batch, height, width * cw)
    nibbles = np.empty((2, n_batch * padded_h * padded_w * cw), np.uint64)
    low = nibbles[0].reshape(n_batch, padded_h, padded_w * cw)
    high = nibbles[1].reshape(n_batch, padded_h, padded_w * cw)
    mask = np.uint64(LOW_NIBBLES)
    for n in range(n_batch):
        for y in range(padded_h):
            for i in range(padded_w * cw):
                word = _padded_word(source, n, y, i, pad_h, pad_w, height, width, pad_word)
                low[n, y, i] = word & mask
                high[n, y, i] = (word >> np.uint64(4)) & mask
    return nibbles


@njit(cache=True, inline="always")
def _pass_of_four(words, base0, base1, offsets, weights, k, acc0, acc1, first, stop,
                  accumulate):
    """acc_p[o] (+)= sum_{j<4} popcount(patch_p[k + j] ^ weights[k + j, o]), p = 0, 1, for
    first <= o < stop, where patch_p[i] = words[base_p + offsets[i]]."""
    i0, i1, i2, i3 = offsets[k], offsets[k + 1], offsets[k + 2], offsets[k + 3]
    a0, a1, a2, a3 = words[base0 + i0], words[base0 + i1], words[base0 + i2], words[base0 + i3]
    b0, b1, b2, b3 = words[base1 + i0], words[base1 + i1], words[base1 + i2], words[base1 + i3]
    w0, w1, w2, w3 = weights[k], weights[k + 1], weights[k + 2], weights[k + 3]
    for o in range(first, stop):
        x0, x1, x2, x3 = w0[o], w1[o], w2[o], w3[o]
        s0 = (popcount64(a0 ^ x0) + popcount64(a1 ^ x1)) + (popcount64(a2 ^ x2)
                                                             + popcount64(a3 ^ x3))
        s1 = (popcount64(b0 ^ x0) + popcount64(b1 ^ x1)) + (popcount64(b2 ^ x2)
                                                             + popcount64(b3 ^ x3))
        if accumulate:
            acc0[o] += s0
            acc1[o] += s1
        else:
            acc0[o] = s0
            acc1[o] = s1


@njit(cache=True, inline="always")
def _popcount_pair(words, base0, base1, offsets, count, weights, acc0, acc1, first, stop):
    """acc_p[o] = sum_{k < count} popcount(words[base_p + offsets[k]] ^ weights[k, o]) for two
    pixels and the output channels first <= o < stop.

    Four patch words per pass over the output channels: each weight load serves two pixels,
    each accumulator update four words; the first pass stores, so nothing needs zeroing.
    """
    k = 0
    if count >= 4:
        _pass_of_four(words, base0, base1, offsets, weights, 0, acc0, acc1, first, stop, False)
        k = 4
    else:
        acc0[first:stop] = 0
        acc1[first:stop] = 0
    while k + 4 <= count:
        _pass_of_four(words, base0, base1, offsets, weights, k, acc0, acc1, first, stop, True)
        k += 4
    while k < count:
        a0, b0 = words[base0 + offsets[k]], words[base1 + offsets[k]]
        w0 = weights[k]
        for o in range(first, stop):
            acc0[o] += popcount64(a0 ^ w0[o])
            acc1[o] += popcount64(b0 ^ w0[o])
        k += 1


@njit(cache=True, inline="always")
def _popcount_single(words, base, offsets, count, weights, acc, first, stop):
    """acc[o] = sum_{k < count} popcount(words[base + offsets[k]] ^ weights[k, o]), one pixel,
    first <= o < stop."""
    acc[first:stop] = 0
    for k in range(count):
        a = words[base + offsets[k]]
        w = weights[k]
        for o in range(first, stop):
            acc[o] += popcount64(a ^ w[o])


@njit(cache=True, inline="always")
def _valid_bits(acc_flat, acc_columns, p, tap_flat, kh, kw, in_channels, ky0, ky1, kx0, kx1,
                zero_padding, first, stop):
    """Number of +-1 products in pixel p's sum, sum = bits - 2 * accs[p, o].

    [ky0, ky1) x [kx0, kx1) are the taps inside the image. With zero padding, a border pixel
    drops the taps in the padding: their popcounts (of zero words against the weights),
    ``tap_ones[ky, kx, o]``, are subtracted in place (for the output channels first <= o <
    stop) and only the valid taps count. ``acc_flat`` is accs u64[>= p + 1, acc_columns] and
    ``tap_flat`` tap_ones u64[kh, kw, O], both flat, indexed unsigned: with signed 2-D
    indices numba checked each for wraparound and this loop ran scalar (5% of Bi-Real-18's
    kernel time in perf samples, most of it in the 7x7 layers, where half the pixels are on
    the border).
    """
    if not zero_padding or (ky0 == 0 and kx0 == 0 and ky1 == kh and kx1 == kw):
        return kh * kw * in_channels
    out_channels = tap_flat.shape[0] // (kh * kw)
    row = np.uint64(p) * np.uint64(acc_columns)
    for ky in range(kh):
        for kx in range(kw):
            if ky < ky0 or ky >= ky1 or kx < kx0 or kx >= kx1:
                tap = np.uint64((ky * kw + kx) * out_channels)
                for o in range(first, stop):
                    channel = np.uint64(o)
                    acc_flat[row + channel] -= tap_flat[tap + channel]
    return max(ky1 - ky0, 0) * max(kx1 - kx0, 0) * in_channels


@njit(cache=True, parallel=True)
def _bconv_kernel(a, weights, tap_ones, in_channels, stride_h, stride_w, pad_h, pad_w,
                  pad_word, zero_padding, out_h, out_w, splits, residual, table, activation,
                  quantize, out_float, out_bits, byte_counts):
    """a uint64[N, H, W, Cw] -> the layer's rows [N*OH*OW, ...] of out_float (f32) and
    out_bits (u64), residual the float rows of the shortcut ([0, 0] for those not used).

    First, serially, the input padded with whole ``pad_word`` words (``_padded_words``; for
    "avx2" straight into its nibble split, ``_padded_nibbles``): a copy of the input, small
    next to the layer's work (a 56x56x64 input is 25 KiB), made here rather than by the caller
    to save a second compiled call per layer.

    Each task (an output row, or with ``splits`` > 1 one of that many equal shares of its
    output channels, each a multiple of 64: see ``channel_splits``) converts its popcounts to
    exact float32 sums into a row scratch [OW, share], then runs the epilogue over it
    (``finish_rows``): no array view is taken per pixel (each one cost a reference count
    update, an NRT call with an atomic add).

    ``byte_counts`` picks the popcount strategy per call (one compiled kernel serves both):
    False "vpopcntdq", the ``popcount64`` loops LLVM vectorizes; True "avx2", the
    ``patch_popcounts*`` intrinsics (``weights`` in the avx2 layout, see ``BConvPlan``).
    """
    n_batch, height, width, cw = a.shape
    padded_h, padded_w = height + 2 * pad_h, width + 2 * pad_w
    kh, kw, out_channels = tap_ones.shape
    tap_flat = tap_ones.ravel()
    columns = weights.shape[0] * BLOCK_CHANNELS if byte_counts else weights.shape[1]
    share = out_channels // splits
    if byte_counts:
        nibbles = _padded_nibbles(a, pad_h, pad_w, pad_word)
        words = nibbles[0]  # not read: the avx2 loops take the nibbles
    else:
        words = _padded_words(a, pad_h, pad_w, pad_word)
        nibbles = np.empty((2, 0), np.uint64)
    row_words = padded_w * cw
    run = kw * cw
    count = kh * run
    offsets = np.zeros(max(count, MIN_PATCH_ROWS), np.int64)
    for ky in range(kh):
        for j in range(run):
            offsets[ky * run + j] = ky * row_words + j
    for task in prange(n_batch * out_h * splits):
        r = task // splits
        first = (task - r * splits) * share  # this task's output channels: first .. stop
        stop = first + share
        n = r // out_h
        oy = r - n * out_h
        accs = np.empty((4, columns), np.uint64)
        acc0, acc1 = accs[0], accs[1]
        acc_flat = accs.ravel()
        sums = np.empty((out_w, share), np.float32)
        sum_flat = sums.ravel()
        bits = np.empty(4, np.int64)
        row_base = (n * padded_h + oy * stride_h) * row_words
        ky0 = max(0, pad_h - oy * stride_h)
        ky1 = min(kh, height + pad_h - oy * stride_h)
        b0, b1 = first // BLOCK_CHANNELS, -(-stop // BLOCK_CHANNELS)  # avx2 weight blocks
        ox = 0
        while ox < out_w:
            left = out_w - ox
            pixels = min(left, 4) if byte_counts else min(left, 2)
            base = row_base + ox * stride_w * cw
            step = stride_w * cw
            if byte_counts:
                if pixels == 4:
                    for o in range(b0, b1):
                        patch_popcounts4_low(nibbles, base, step, offsets, count, weights, o, accs)
                        patch_popcounts4_high(nibbles, base, step, offsets, count, weights, o,
                                              accs)
                elif pixels == 3:
                    for o in range(b0, b1):
                        patch_popcounts3_low(nibbles, base, step, offsets, count, weights, o,
                                             accs)
                        patch_popcounts3_high(nibbles, base, step, offsets, count, weights, o,
                                              accs)
                elif pixels == 2:
                    for o in range(b0, b1):
                        patch_popcounts_bytes(nibbles, base, step, offsets, count, weights, o,
                                              accs)
                else:
                    for o in range(b0, b1):
                        patch_popcount_bytes(nibbles, base, step, offsets, count, weights, o, accs)
            elif pixels == 2:
                _popcount_pair(words, base, base + step, offsets, count, weights, acc0, acc1,
                               first, stop)
            else:
                _popcount_single(words, base, offsets, count, weights, acc0, first, stop)
            for p in range(pixels):
                x = ox + p
                kx0 = max(0, pad_w - x * stride_w)
                kx1 = min(kw, width + pad_w - x * stride_w)
                bits[p] = _valid_bits(acc_flat, columns, p, tap_flat, kh, kw, in_channels, ky0,
                                      ky1, kx0, kx1, zero_padding, first, stop)
            finish_popcounts_rows(acc_flat, columns, pixels, bits, sum_flat, share, ox, first)
            ox += pixels
        finish_rows(sums, out_w, r * out_w, first, share, residual, table, activation,
                    quantize, out_float, out_bits)


class BConvCall:
    """``bconv2d`` of one plan and one epilogue, bound once: what does not depend on the input
    (the epilogue's checks, the kernel's arguments) is settled here, so a call checks its input
    and residual, allocates its outputs and runs the kernel. An execution plan binds each
    binary conv step once (``runtime.graph``). In Bi-Real-18 a step spent 25-40 us outside
    its 0.3-0.8 ms kernel; with the kernel stubbed out, a step's Python took 13.5 us unbound
    (the padded copy included) and 9.1 us bound (min of 2000 calls)."""

    def __init__(self, plan: BConvPlan, epilogue: Epilogue | None = None) -> None:
        self.plan = plan
        self.epilogue = check_epilogue(LAYER, epilogue, plan.out_channels, keep_float=True)
        self._trailing = (*plan.in_hw, words_for(plan.in_channels))
        self._geometry = (plan.weights, plan.tap_ones, plan.in_channels, *plan.stride,
                          *plan.padding, plan.pad_word, plan.pad_value == 0, *plan.out_hw)
        self._transform = (self.epilogue.table, self.epilogue.activation,
                           self.epilogue.quantize)
        self._byte_counts = plan.popcount == "avx2"

    def __call__(
        self, a_bits: np.ndarray, residual: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """See ``bconv2d``."""
        check_input(LAYER, a_bits, np.uint64, self._trailing, " (packed NHWC)")
        plan = self.plan
        (out_h, out_w), channels = plan.out_hw, plan.out_channels
        shape = (a_bits.shape[0], out_h, out_w, channels)
        residual = check_residual(residual, shape)
        result, out_float, out_bits = output_buffers(shape, self.epilogue, out)
        rows = shape[0] * out_h * out_w
        splits = channel_splits(shape[0] * out_h, channels, kernel_threads())
        _bconv_kernel(np.ascontiguousarray(a_bits), *self._geometry, splits,
                      _as_rows(residual, rows), *self._transform, _as_rows(out_float, rows),
                      _as_rows(out_bits, rows), self._byte_counts)
        return result


def bconv2d(
    plan: BConvPlan,
    a_bits: np.ndarray,
    epilogue: Epilogue | None = None,
    *,
    residual: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Binary convolution of packed activations uint64[N, H, W, ceil(C/64)] (NHWC).

    Returns float32[N, OH, OW, O] (the epilogue applied to the exact integer sums), or packed
    bits uint64[N, OH, OW, ceil(O/64)] when the epilogue quantizes, or the pair (floats, bits)
    when it also keeps the floats (``keep_float``). ``residual`` f32[N, OH, OW,
    O] is added after the affine, before the activation; ``out`` is the array to write the
    result into (with ``keep_float``, the floats; it may be ``residual`` itself: each
    residual element is read before the output element at its place is written). Threads:
    ``numba.set_num_threads``.
    Calling one plan with one epilogue many times: bind them once, ``BConvCall``.
    """
    return BConvCall(plan, epilogue)(a_bits, residual, out)
