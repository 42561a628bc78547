"""Per-step profile of a model's plan: measured time, share, MACs and MACs per cycle.

``Model.profile(x, repeats=10)`` times every ``Step`` of the plan (a fused chain is one row)
and returns a ``Profile``; ``Profile.table()`` renders it as text.

**MACs** (multiply-accumulates) come from each step's nodes' attrs and output shapes, for the
whole batch N (``Ho, Wo``: the output's spatial size; ``C``: input channels; ``O``: output
channels or features; ``F``: input features):

- ``bconv2d``: N*Ho*Wo*O*kh*kw*C binary MACs (each an XNOR and a popcount bit);
- ``conv2d``: N*Ho*Wo*O*kh*kw*C/groups float MACs;
- ``bdense``: N*O*F binary, ``dense``: N*O*F float MACs;
- ``dyquantize`` / ``dyprelu``: their per-sample hyper-network, N*(Hd*C + k*C*Hd) float MACs
  (``Hd`` hidden units, k = 1 or 2 heads);
- every other op (affine, activations, pooling, add, ...): 0, they are not MACs.

**MACs per cycle** = (binary + float MACs) / (seconds * clock). The clock is the one stated
by the caller (``clock_hz``) or else measured on the calling thread's core right after the
passes (``runtime.clock.core_clock``: a chain of dependent multiplies on x86-64, about 30 ms;
elsewhere the "cpu MHz" /proc/cpuinfo reports, which can be the base clock, below a turbo
clock, and then overstates the figure). With several threads the figure is for all of them
together. Without either, the column is left empty.

**Time.** Each step is timed with ``time.perf_counter`` around its call, summed over the
batch's chunks, and the minimum over the repeats is kept (the least disturbed by other
processes); shares are of the sum of those minima. ``wall_seconds`` is the minimum over the
repeats of a whole pass, including the NCHW <-> NHWC conversion of inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime.clock import core_clock
from runtime.graph import Step
from runtime.schema import Node, ValueInfo


@dataclass(frozen=True)
class StepProfile:
    """One row: ``index`` in the plan, ``label`` (ops joined by "+"), ``name`` (first .. last
    node), ``seconds`` for the whole batch, ``share`` of the steps' total, MAC counts, and
    MACs per cycle (None without a clock)."""

    index: int
    label: str
    name: str
    seconds: float
    share: float
    binary_macs: int
    float_macs: int
    macs_per_cycle: float | None


@dataclass(frozen=True)
class Profile:
    """The profile of one model on one input: rows in plan order plus how it was measured."""

    steps: tuple[StepProfile, ...]
    batch: int
    threads: int
    repeats: int
    clock_hz: float | None
    clock_source: str
    wall_seconds: float

    @property
    def total_seconds(self) -> float:
        """Sum of the steps' times (each the minimum over the repeats)."""
        return sum(step.seconds for step in self.steps)

    def table(self) -> str:
        """Plain-text table: one row per step, then the totals and how it was measured."""
        rows = [("#", "op", "name", "ms", "share", "binary MACs", "float MACs", "MACs/cycle")]
        for s in self.steps:
            rows.append(
                (
                    str(s.index),
                    s.label,
                    s.name,
                    f"{s.seconds * 1e3:.3f}",
                    f"{s.share:.1%}",
                    f"{s.binary_macs:,}",
                    f"{s.float_macs:,}",
                    _per_cycle(s.macs_per_cycle),
                )
            )
        binary = sum(s.binary_macs for s in self.steps)
        floats = sum(s.float_macs for s in self.steps)
        cycles = None if self.clock_hz is None else self.total_seconds * self.clock_hz
        total_rate = None if not cycles else (binary + floats) / cycles
        rows.append(
            (
                "",
                "total",
                "",
                f"{self.total_seconds * 1e3:.3f}",
                "100.0%",
                f"{binary:,}",
                f"{floats:,}",
                _per_cycle(total_rate),
            )
        )
        widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
        text_columns = {1, 2}

        def line(row: Sequence[str]) -> str:
            cells = [
                cell.ljust(w) if k in text_columns else cell.rjust(w)
                for k, (cell, w) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        clock = "no clock" if self.clock_hz is None else f"{self.clock_hz / 1e6:.0f} MHz"
        notes = (
            f"batch {self.batch}, {self.threads} thread(s), min of {self.repeats} repeats; "
            f"whole predict {self.wall_seconds * 1e3:.3f} ms; clock {clock} ({self.clock_source})"
        )
        body = [line(row) for row in rows[1:-1]]
        return "\n".join([line(rows[0]), rule, *body, rule, line(rows[-1]), notes])


def _per_cycle(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def node_macs(node: Node, values: Mapping[str, ValueInfo], batch: int) -> tuple[int, int]:
    """(binary MACs, float MACs) of one node over ``batch`` samples (formulas: module top)."""
    a = node.attrs
    out = values[node.outputs[0]].shape
    if node.op in ("bconv2d", "conv2d"):
        kh, kw = a["kernel"]
        macs = batch * out[1] * out[2] * a["out_channels"] * kh * kw * a["in_channels"]
        if node.op == "bconv2d":
            return macs, 0
        return 0, macs // a["groups"]
    if node.op in ("bdense", "dense"):
        macs = batch * a["out_features"] * a["in_features"]
        return (macs, 0) if node.op == "bdense" else (0, macs)
    if node.op in ("dyquantize", "dyprelu"):
        heads = 1 if node.op == "dyquantize" else 2
        return 0, batch * (a["hidden"] * a["channels"] * (1 + heads))
    return 0, 0


def build_profile(
    steps: Sequence[Step],
    values: Mapping[str, ValueInfo],
    seconds: Sequence[float],
    wall_seconds: float,
    *,
    batch: int,
    threads: int,
    repeats: int,
    clock_hz: float | None = None,
) -> Profile:
    """Assemble the rows from the plan and each step's measured ``seconds``."""
    if clock_hz is None:
        clock_hz, source = core_clock()
    else:
        source = "given"
    total = sum(seconds)
    rows = []
    for i, (step, spent) in enumerate(zip(steps, seconds)):
        binary, floats = (sum(m) for m in zip(*(node_macs(n, values, batch) for n in step.nodes)))
        first, last = step.nodes[0].name, step.nodes[-1].name
        cycles = None if clock_hz is None else spent * clock_hz
        rows.append(
            StepProfile(
                index=i,
                label=step.label,
                name=first if first == last else f"{first} .. {last}",
                seconds=spent,
                share=spent / total if total > 0 else 0.0,
                binary_macs=binary,
                float_macs=floats,
                macs_per_cycle=(binary + floats) / cycles if cycles else None,
            )
        )
    return Profile(tuple(rows), batch, threads, repeats, clock_hz, source, wall_seconds)
