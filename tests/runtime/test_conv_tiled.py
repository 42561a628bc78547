"""The tiled float conv2d (runtime/kernels/conv.py): im2col + GEMM + epilogue per tile of
output pixels, tiles shared among numba's thread count.

Each case runs the same conv three ways: tiled (small tiles that split output rows and
samples unevenly), as one tile over the whole batch (the former whole-batch im2col + one
GEMM + epilogue pass), and the float64 reference of
test_kernels_float. The tiled and whole-batch results may differ in the last bits (BLAS
sums a different M differently), so floats are compared with a float32 tolerance and packed
bits must agree except where the pre-quantize value lies within that tolerance of its
threshold.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numba
import numpy as np
import pytest

from runtime.kernels import conv as conv_kernels
from runtime.kernels import conv2d, make_epilogue, prepare_conv2d
from tests.runtime.test_kernels_float import naive_conv2d

# (name, batch, C, O, hw, kernel, stride, padding, dilation, groups)
CASES = [
    ("stem-like 7x7/2", 2, 3, 16, (23, 21), (7, 7), (2, 2), (3, 3), (1, 1), 1),
    ("3x3 pad 1", 3, 8, 70, (9, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ("dilated 3x2 stride 1x2", 2, 5, 9, (13, 10), (3, 2), (1, 2), (2, 1), (2, 3), 1),
    ("pointwise 1x1", 2, 24, 33, (7, 9), (1, 1), (1, 1), (0, 0), (1, 1), 1),
    ("downsample 1x1/2", 2, 16, 20, (9, 9), (1, 1), (2, 2), (0, 0), (1, 1), 1),
    ("groups 2", 2, 6, 8, (8, 7), (3, 3), (2, 1), (1, 1), (1, 1), 2),
    ("groups 3 dilated", 2, 9, 12, (10, 9), (3, 3), (1, 1), (2, 1), (2, 1), 3),
]
# tile sizes in output pixels: 1, uneven ones that split rows (and samples), and one tile
WHOLE = 10**9  # one tile: the whole batch
TILE_PIXELS = [1, 7, 23, WHOLE]


def make_case(case: tuple, rng: np.random.Generator, quantize: bool, residual: bool,
              tiled: bool = True):
    """(plan, x, weight, epilogue, residual, float epilogue) for ``case``: affine + optional
    residual + RPReLU, quantized to bits or float out; the float epilogue is the same chain
    without the quantize (to find near-ties). ``tiled``: the plan of the tiled path, also
    for the convs the direct kernel would take (those are tested in test_conv_direct.py)."""
    _, batch, channels, out_channels, hw, kernel, stride, padding, dilation, groups = case
    x = rng.standard_normal((batch, *hw, channels)).astype(np.float32)
    weight = rng.standard_normal((out_channels, channels // groups, *kernel)).astype(np.float32)
    plan = prepare_conv2d(weight, channels, hw, stride, padding, dilation, groups)
    if tiled:
        plan = dataclasses.replace(plan, direct=None)

    def vector(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, out_channels).astype(np.float32)

    options = dict(scale=vector(0.5, 1.5), bias=vector(-1, 1),
                   rprelu=(vector(-1, 1), vector(-1, 1), vector(0, 0.5)))
    shape = (batch, *plan.out_hw, out_channels)
    shortcut = rng.standard_normal(shape).astype(np.float32) if residual else None
    as_float = make_epilogue(out_channels, **options)
    sign = np.where(rng.random(out_channels) < 0.3, -1, 1).astype(np.int8)
    epilogue = make_epilogue(out_channels, **options, quantize=(vector(-1, 1), sign)) \
        if quantize else as_float
    return plan, x, weight, epilogue, shortcut, as_float


def run(plan, x, epilogue, shortcut, pixels: int | None, threads: int,
        monkeypatch) -> np.ndarray:
    """conv2d with tiles of ``pixels`` output pixels (None: the configured tiling) on
    ``threads`` threads, shared among the threads however small the conv."""
    with monkeypatch.context() as patch:
        if pixels is not None:
            patch.setattr(conv_kernels, "_tile_pixels", lambda rows, *_: min(rows, pixels))
        patch.setattr(conv_kernels, "_SPLIT_MACS", 0)
        before = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            return conv2d(plan, x, epilogue, residual=shortcut)
        finally:
            numba.set_num_threads(before)


def assert_close(got: np.ndarray, expected: np.ndarray, message: str = "") -> None:
    """Equal within float32 rounding of sums: 1e-5 relative, 1e-5 of the largest |value|
    absolute (a value near 0 can be the difference of large partial sums)."""
    np.testing.assert_allclose(got, expected, rtol=1e-5,
                               atol=1e-5 * float(np.abs(expected).max()), err_msg=message)


def assert_bits_match_except_ties(got, expected, values, epilogue) -> None:
    """Packed bits equal, except channels whose float value is within the ``assert_close``
    tolerance of the threshold."""
    channels = epilogue.channels
    unpack = lambda words: np.unpackbits(  # noqa: E731
        words.astype("<u8").view(np.uint8), axis=-1, bitorder="little")[..., :channels]
    differ = unpack(got) != unpack(expected)
    sign = epilogue.table[5]
    threshold = epilogue.table[6] * sign  # sign * (sign * t) = t
    tolerance = 1e-5 * (np.abs(threshold) + float(np.abs(values).max()))
    near = np.abs(values.astype(np.float64) - threshold) <= tolerance
    assert not np.any(differ & ~near), f"{np.sum(differ & ~near)} bits differ off a tie"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_conv_matches_whole_batch_and_reference(case, threads, monkeypatch):
    rng = np.random.default_rng(zlib.crc32(case[0].encode()))
    plan, x, weight, epilogue, shortcut, _ = make_case(case, rng, False, True)
    _, _, _, _, _, _, stride, padding, dilation, groups = case
    whole = run(plan, x, epilogue, shortcut, WHOLE, 1, monkeypatch)
    raw = naive_conv2d(x, weight, stride, padding, dilation, groups)
    table = epilogue.table.astype(np.float64)
    y = raw * table[0] + table[1] + shortcut
    y = np.where(y >= table[2], y - table[2] + table[3], table[4] * (y - table[2]) + table[3])
    np.testing.assert_allclose(whole, y, rtol=1e-4, atol=1e-4)
    for pixels in TILE_PIXELS:
        got = run(plan, x, epilogue, shortcut, pixels, threads, monkeypatch)
        assert got.dtype == np.float32 and got.shape == whole.shape
        assert_close(got, whole, f"{pixels} px")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("residual", [False, True])
def test_tiled_conv_quantized_bits(case, residual, monkeypatch):
    rng = np.random.default_rng(zlib.crc32(case[0].encode()) + 1)
    plan, x, _, epilogue, shortcut, as_float = make_case(case, rng, True, residual)
    whole = run(plan, x, epilogue, shortcut, WHOLE, 1, monkeypatch)
    values = run(plan, x, as_float, shortcut, WHOLE, 1, monkeypatch)
    assert whole.dtype == np.uint64
    for threads in (1, 2):
        for pixels in TILE_PIXELS:
            got = run(plan, x, epilogue, shortcut, pixels, threads,
                      monkeypatch)
            assert got.shape == whole.shape
            assert_bits_match_except_ties(got, whole, values, epilogue)


def test_default_tiles_and_out_argument(monkeypatch):
    """The configured tile size, more than one tile, on 2 threads, into a given ``out``."""
    case = ("wide", 2, 3, 64, (64, 60), (7, 7), (2, 2), (3, 3), (1, 1), 1)
    rng = np.random.default_rng(7)
    plan, x, _, epilogue, _, _ = make_case(case, rng, False, False)
    job = conv_kernels._TiledConv(plan, x, epilogue, *(np.empty((0, 0), np.float32),) * 2,
                                  np.empty((0, 0), np.uint64))
    assert job.tiles > 2
    whole = run(plan, x, epilogue, None, WHOLE, 1, monkeypatch)
    out = np.full(whole.shape, np.nan, np.float32)
    assert conv2d(plan, x, epilogue, out=out) is out
    assert_close(out, whole)
    assert_close(run(plan, x, epilogue, None, None, 2, monkeypatch), whole)


def test_concurrent_calls_share_the_pool(monkeypatch):
    """Several Python threads running 2-thread tiled convs at once (one shared pool, each
    call's own tile counter and per-thread scratch) all get their own right result."""
    case = ("concurrent", 1, 4, 16, (20, 20), (3, 3), (1, 1), (1, 1), (1, 1), 1)
    rng = np.random.default_rng(3)
    plans = [make_case(case, rng, False, True) for _ in range(4)]
    expected = [run(p, x, e, s, WHOLE, 1, monkeypatch) for p, x, _, e, s, _ in plans]
    monkeypatch.setattr(conv_kernels, "_tile_pixels", lambda rows, *_: 13)
    monkeypatch.setattr(conv_kernels, "_SPLIT_MACS", 0)
    results: dict[int, list[np.ndarray]] = {}

    def worker(index: int) -> None:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        plan, x, _, epilogue, shortcut, _ = plans[index]
        results[index] = [conv2d(plan, x, epilogue, residual=shortcut) for _ in range(20)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, outputs in results.items():
        for got in outputs:
            assert_close(got, expected[index])
    assert len(results) == len(plans)


def test_tile_size_rules():
    """L2-sized tiles for a small weight (at least _MIN_TILE_PIXELS), long tiles for a large
    one (BLAS packs the weight per call), never more than the conv has, and at least one
    tile per thread."""
    stem = conv_kernels._tile_pixels(12544, 147, 64, 147 * 64 * 4, 1)
    assert stem == max(conv_kernels._MIN_TILE_PIXELS, conv_kernels._TILE_BYTES // (4 * 211))
    assert conv_kernels._tile_pixels(12544, 147, 64, 147 * 64 * 4, 2) == stem
    big = 4608 * 512 * 4
    assert conv_kernels._tile_pixels(10**6, 4608, 512, big, 1) == \
        big // conv_kernels._WEIGHT_BYTES_PER_PIXEL
    assert conv_kernels._tile_pixels(392, 4608, 512, big, 1) == 392
    assert conv_kernels._tile_pixels(49, 4608, 512, big, 2) == 25
    assert conv_kernels._tile_pixels(1, 4608, 512, big, 2) == 1


FORK_SCRIPT = """
import dataclasses
import multiprocessing
import numba
import numpy as np
from runtime.kernels import conv as conv_kernels
from runtime.kernels import conv2d, prepare_conv2d

rng = np.random.default_rng(0)
x = rng.standard_normal((1, 64, 64, 3)).astype(np.float32)
plan = prepare_conv2d(rng.standard_normal((64, 3, 7, 7)).astype(np.float32), 3, (64, 64), 2, 3)
plan = dataclasses.replace(plan, direct=None)  # the tiled path and its pool
numba.set_num_threads(2)
conv_kernels._SPLIT_MACS = 0
expected = conv2d(plan, x)  # the parent starts the 2-thread pool
assert list(conv_kernels._pools) == [2]

def child(_):
    numba.set_num_threads(2)
    return conv2d(plan, x)

with multiprocessing.get_context("fork").Pool(1) as pool:
    got = pool.map_async(child, [0]).get(timeout=60)[0]
np.testing.assert_array_equal(got, expected)
print("child agrees")
"""


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2 or not hasattr(os, "fork"),
                    reason="needs 2 numba threads and fork()")
def test_tiled_conv_in_forked_child_after_parent_used_the_pool():
    """A fork()ed child gets none of the parent's pool threads: its conv must make its own
    pool instead of waiting forever for a task queued on a dead one (it hung before)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    try:
        result = subprocess.run([sys.executable, "-c", FORK_SCRIPT], env=env,
                                capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the forked child's conv hung: {error.stderr}")
    assert result.returncode == 0, result.stderr
    assert "child agrees" in result.stdout
