"""The performance targets a result file checks, and how it says whether each was met.

Every benchmark that measures a target ends its result file with a table of them: the target,
what this run measured, and either "met" or by how much it fell short, with the next lever
where it did (what the measurements point at, not a promise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """``measured`` against ``goal``: met when measured >= goal (``higher_is_better``) or
    measured <= goal (otherwise). ``unit`` follows both numbers ("x", "%"); ``lever`` is
    printed only when the target is missed."""

    what: str
    goal: float
    measured: float
    unit: str = "x"
    higher_is_better: bool = True
    lever: str = ""

    @property
    def met(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.goal
        return self.measured <= self.goal

    def verdict(self) -> str:
        """"met", or how far the measured value is from the goal: "short by N%" relative to
        the goal, or by N points for a goal that is itself a fraction (``unit`` "%")."""
        if self.met:
            return "met"
        gap = abs(self.measured - self.goal)
        if self.unit == "%":
            return f"short by {gap * 100:.0f} points"
        relative = gap / self.goal
        return f"short by {relative:.1%}" if relative < 0.01 else f"short by {relative:.0%}"


def _number(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.0%}"
    return f"{value:.3f}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"


def targets_table(targets: Sequence[Target], heading: str = "## Targets") -> list[str]:
    """Markdown lines: a heading and one row per target (goal, measured, verdict, lever; a
    lever the row before already gave reads "as above")."""
    lines = [
        heading,
        "",
        "| target | goal | measured | verdict | next lever (where missed) |",
        "|---|---:|---:|---|---|",
    ]
    shown = ""
    for target in targets:
        goal = (">= " if target.higher_is_better else "<= ") + _number(target.goal, target.unit)
        lever = "" if target.met else target.lever
        if lever and lever == shown:
            lever = "as above"
        elif lever:
            shown = lever
        lines.append(f"| {target.what} | {goal} | {_number(target.measured, target.unit)} | "
                     f"{target.verdict()} | {lever} |")
    return lines
