"""Model.profile: one row per plan step, shares summing to 1, MACs equal to hand counts."""

from __future__ import annotations

import numpy as np
import pytest
from rt_builder import IRBuilder

import runtime
from runtime import clock

BATCH = 3


@pytest.fixture(scope="module")
def model() -> runtime.Model:
    """dyquantize -> bconv2d 3->8 (3x3, pad 1) -> affine -> conv2d 8->4 (3x3, groups 2)
    -> global avgpool -> flatten -> quantize -> bdense 4->5 -> dense 5->3, on 3x8x8."""
    b = IRBuilder(seed=2)
    h = b.dyquantize(b.input([3, 8, 8]), hidden=4)
    h = b.conv2d(b.affine(b.bconv2d(h, 8, kernel=3, padding=1)), 4, kernel=3, groups=2)
    h = b.unary("flatten", b.unary("global_avgpool", h))
    b.output(b.dense(b.bdense(b.quantize(h), 5), 3))
    return runtime.load(b.to_bytes(), threads=1)


# hand counts for a batch of 3 (runtime/profile.py's formulas)
BCONV = BATCH * 8 * 8 * 8 * 3 * 3 * 3  # N*Ho*Wo*O*kh*kw*C
CONV = BATCH * 8 * 8 * 4 * 3 * 3 * 8 // 2  # .../groups
BDENSE = BATCH * 5 * 4  # N*O*F
DENSE = BATCH * 3 * 5
DYQUANTIZE = BATCH * (4 * 3 + 3 * 4)  # hyper-network fc1 [4, 3] and fc2 [3, 4]


@pytest.fixture(scope="module")
def profile(model) -> runtime.profile.Profile:
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 8, 8)).astype(np.float32)
    return model.profile(x, repeats=3, clock_hz=2e9)


def test_rows_cover_every_step_in_plan_order(model, profile):
    assert [row.label for row in profile.steps] == [step.label for step in model.plan]
    assert [row.index for row in profile.steps] == list(range(len(model.plan)))
    assert all(row.seconds > 0 for row in profile.steps)
    assert sum(row.share for row in profile.steps) == pytest.approx(1.0)
    assert profile.total_seconds <= profile.wall_seconds
    assert (profile.batch, profile.threads, profile.repeats) == (BATCH, 1, 3)


def test_macs_equal_hand_counts(profile):
    by_op = {row.label.split("+")[0]: row for row in profile.steps}
    assert (by_op["bconv2d"].binary_macs, by_op["bconv2d"].float_macs) == (BCONV, 0)
    assert (by_op["conv2d"].binary_macs, by_op["conv2d"].float_macs) == (0, CONV)
    assert (by_op["bdense"].binary_macs, by_op["bdense"].float_macs) == (BDENSE, 0)
    assert (by_op["dense"].binary_macs, by_op["dense"].float_macs) == (0, DENSE)
    assert by_op["dyquantize"].float_macs == DYQUANTIZE
    assert by_op["global_avgpool"].binary_macs == by_op["global_avgpool"].float_macs == 0
    assert sum(r.binary_macs for r in profile.steps) == BCONV + BDENSE
    assert sum(r.float_macs for r in profile.steps) == CONV + DENSE + DYQUANTIZE


def test_macs_per_cycle_use_the_stated_clock(profile):
    assert profile.clock_source == "given"
    for row in profile.steps:
        macs = row.binary_macs + row.float_macs
        assert row.macs_per_cycle == pytest.approx(macs / (row.seconds * 2e9))


def test_table_has_a_row_per_step_and_totals(profile):
    lines = profile.table().splitlines()
    assert lines[0].split()[:5] == ["#", "op", "name", "ms", "share"]
    assert len(lines) == 1 + 1 + len(profile.steps) + 1 + 1 + 1
    assert lines[-2].split()[:1] == ["total"]
    assert f"{BCONV + BDENSE:,}" in lines[-2] and "100.0%" in lines[-2]
    assert "batch 3, 1 thread(s), min of 3 repeats" in lines[-1]
    assert "2000 MHz (given)" in lines[-1]


def test_default_clock_is_measured_and_bad_repeats_are_refused(model):
    x = np.zeros((1, 3, 8, 8), np.float32)
    profile = model.profile(x, repeats=1)
    if clock.is_x86_64():
        assert profile.clock_source == "measured: dependent imul chain"
        assert 1.2e9 < profile.clock_hz < 6.5e9  # a core clock (3 cycles per multiply)
    else:
        assert (profile.clock_hz is not None) == (clock.cpuinfo_clock_hz() is not None)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="repeats must be a positive integer"):
            model.profile(x, repeats=bad)
    with pytest.raises(runtime.InputError):
        model.profile(np.zeros((1, 3, 8, 8)), repeats=1)
