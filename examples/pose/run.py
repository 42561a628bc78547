"""Binary human-pose estimation on SYNTHETIC stick figures (`make pose`).

    python examples/pose/run.py            # full
    python examples/pose/run.py --quick    # < 20 min on 2 cores
    python examples/pose/run.py --smoke    # seconds (the test suite)

THE DATA IS SYNTHETIC: rendered articulated stick figures (data.py), not photographs of
people; no pose dataset installs offline. What it measures honestly is heatmap regression,
PCKh, stacking and distillation of binary hourglasses against their float teachers.

The float network is `binarize.models.hourglass` with Bulat and Tzimiropoulos's hierarchical
blocks, returning a list of per-stack heatmaps (F.max_pool2d, F.interpolate, residual adds).
Rows, each over `--seeds` seeds:

- float hourglasses of 1, 2 and 3 stacks (trained once per seed, cached);
- `reactnet` binary hourglasses of 1, 2 and 3 stacks with heatmap distillation from the
  float hourglass of the same stacks, and the 2-stack one without distillation (the effects
  of stacking and of distillation are measured on the recipe that learns best here);
- `bulat` 2-stack hourglasses with and without distillation (the seed paper's recipe);
- a `dybnn` 2-stack hourglass (with heatmap distillation).

Every stack is supervised (metrics.StackedHeatmapLoss passed as `finetune(loss=...)`).
Each binary row is packed and run by `runtime`: its PCKh must equal PyTorch's within 0.1
points, and its batch-1 latency is compared with the float hourglass in PyTorch.

=======  ============================  =========================  ======================
mode     seeds                         train / val / test images  epochs (float, binary)
=======  ============================  =========================  ======================
full     3 (every row)                 2000 / 300 / 1000          6, 4
quick    3 (main rows), 1 (the rest)   1000 / 200 / 500           5, 3
smoke    1                             48 / 16 / 32               1, 1 (width 8, depth 1)
=======  ============================  =========================  ======================

The main rows are the float, `reactnet` and `bulat` 2-stack hourglasses, the binary ones
with and without distillation. An hourglass step costs ~15 ms (float) to ~30 ms (binary,
with its teacher) per 64x64 image on one core of a 2-core EPYC, most of it per-op overhead
of the many small layers; the full mode is sized to fit 90 minutes there, and the quick
mode writes its own estimate of the full mode's wall time.

Results: examples/pose/RESULTS.md and skeletons.png (`--out`); runs are cached as JSON under
.cache/pose/ (`--cache`). The quick mode estimates the full mode's wall time from its own
measured times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/experiments.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # data, metrics, worker, report

import report
import worker
from experiments import cpu_model, run_tasks, write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass(frozen=True)
class Mode:
    """Data, budgets and seeds; `every_row_seeded` False runs the rows outside MAIN on the
    first seed only."""

    name: str
    seeds: int
    config: worker.Config
    every_row_seeded: bool = True


MODES = {
    "full": Mode("full", 3, worker.Config(2000, 300, 1000, 6, 4)),
    "quick": Mode("quick", 3, worker.Config(1000, 200, 500, 5, 3), every_row_seeded=False),
    "smoke": Mode("smoke", 1, worker.Config(48, 16, 32, 1, 1, width=8, depth=1, batch_size=16)),
}
ROWS = (  # (name, recipe, stacks, heatmap distillation)
    ("reactnet, 1 stack", "reactnet", 1, True),
    ("reactnet, 2 stacks", "reactnet", 2, True),
    ("reactnet, 3 stacks", "reactnet", 3, True),
    ("reactnet, 2 stacks, no distillation", "reactnet", 2, False),
    ("bulat, 2 stacks", "bulat", 2, True),
    ("bulat, 2 stacks, no distillation", "bulat", 2, False),
    ("dybnn, 2 stacks", "dybnn", 2, True),
)
MAIN = {("float", 2), ("reactnet, 2 stacks", 2), ("reactnet, 2 stacks, no distillation", 2),
        ("bulat, 2 stacks", 2), ("bulat, 2 stacks, no distillation", 2)}
# what the report compares: (question, row a, row b, stacks a, stacks b)
EFFECTS = (
    ("2 stacks vs 1 (reactnet)", "reactnet, 1 stack", "reactnet, 2 stacks", 1, 2),
    ("3 stacks vs 2 (reactnet)", "reactnet, 2 stacks", "reactnet, 3 stacks", 2, 3),
    ("distillation (reactnet, 2 stacks)", "reactnet, 2 stacks, no distillation",
     "reactnet, 2 stacks", 2, 2),
    ("distillation (bulat, 2 stacks)", "bulat, 2 stacks, no distillation", "bulat, 2 stacks",
     2, 2),
    ("reactnet vs bulat (2 stacks, distilled)", "bulat, 2 stacks", "reactnet, 2 stacks", 2, 2),
    ("dybnn vs reactnet (2 stacks, distilled)", "reactnet, 2 stacks", "dybnn, 2 stacks", 2, 2),
    ("float: 2 stacks vs 1", "float", "float", 1, 2),
    ("float: 3 stacks vs 2", "float", "float", 2, 3),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="< 20 min on 2 cores")
    which.add_argument("--smoke", action="store_true", help="seconds (tests)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs at once, one process and one torch thread each")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: the mode's)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of RESULTS.md and plots")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "pose",
                        help="folder of the rendered data, float teachers and run results")
    return parser.parse_args(argv)


def tasks_of(mode: Mode, seeds: int, cache: Path) -> tuple[list, list]:
    """(float tasks, binary tasks), longest first; a float teacher for every binary run."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = {"config": mode.config, "cache": cache, "device": device}
    def seeded(name: str, stacks: int) -> range:
        main = mode.every_row_seeded or (name, stacks) in MAIN
        return range(seeds if main else 1)

    floats = [
        worker.Task(s, stacks, **common) for stacks in (3, 2, 1) for s in seeded("float", stacks)
    ]
    binary = [
        worker.Task(s, stacks, name=name, recipe=recipe, distill=distill, **common)
        for name, recipe, stacks, distill in ROWS
        for s in seeded(name, stacks)
    ]
    binary.sort(key=lambda t: -t.stacks)
    return floats, binary


def run_all(tasks: Sequence[worker.Task], jobs: int, done: list[dict[str, Any]]) -> None:
    """Run `tasks` on `jobs` processes (in this process when 1), appending their records."""
    def report_one(record: dict[str, Any]) -> None:
        done.append(record)
        print(f"[{len(done)}] seed {record['seed']} {record['name']} ({record['stacks']} "
              f"stacks): PCKh {100 * record['pck']:.2f} in {record['wall_seconds']:.0f} s",
              flush=True)

    run_tasks(tasks, jobs, worker.run, lambda _, record: report_one(record))


def estimate_full(records: Sequence[dict[str, Any]], measured: Mode, jobs: int) -> float:
    """Wall seconds of the full mode on `jobs` processes, from these records: training time
    scales with epochs x training images, the rest (convert, evaluation, pack, runtime) with
    test images; per row averaged over seeds, summed over the full mode's runs, / jobs."""
    full, m = MODES["full"], measured.config
    f = full.config
    per_row: dict[tuple[str, int], list[float]] = {}
    for r in records:
        full_epochs = f.float_epochs if r["recipe"] is None else f.epochs
        n_ratio = (f.n_train + f.n_val) / (m.n_train + m.n_val)
        t = (r["train_seconds"] * full_epochs / r["epochs"] * n_ratio
             + r["other_seconds"] * f.n_test / m.n_test)
        per_row.setdefault((r["name"], r["stacks"]), []).append(t)
    one_seed = sum(sum(ts) / len(ts) for ts in per_row.values())
    return one_seed * full.seeds / jobs  # the full mode runs every row on every seed


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    seeds = args.seeds or mode.seeds
    started = time.perf_counter()
    torch.set_num_threads(1)
    worker.splits(mode.config, args.cache)  # render the data once, before the workers start
    floats, binary = tasks_of(mode, seeds, args.cache)
    cached = sum(t.result_path.exists() for t in [*floats, *binary])
    print(f"pose ({mode.name}, SYNTHETIC stick figures): {len(floats)} float hourglasses, "
          f"{len(binary)} binary runs, {cached} cached; {args.jobs} processes", flush=True)
    records: list[dict[str, Any]] = []
    run_all(floats, args.jobs, records)
    run_all(binary, args.jobs, records)
    wall = time.perf_counter() - started
    c = mode.config
    device = f"CUDA ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU"
    header = [
        f"Generated by `python examples/pose/run.py {' '.join(sys.argv[1:])}` (mode "
        f"**{mode.name}**) on {datetime.date.today().isoformat()}.",
        "",
        "| | |",
        "|---|---|",
        "| data | **SYNTHETIC** 64x64 stick figures with 14 joints (examples/pose/data.py), "
        f"{c.n_train} train / {c.n_val} validation / {c.n_test} test images, fixed splits |",
        f"| seeds | {', '.join(str(s) for s in range(seeds))}"
        + ("" if mode.every_row_seeded else " for the main rows, 0 for the others") + " |",
        f"| model | `hourglass(stacks, 14, depth={c.depth}, width={c.width}, "
        "block='hierarchical', outputs='list')`, heatmaps 16x16 |",
        f"| training | float {c.float_epochs} epochs (lr {c.float_lr}, cosine), binary "
        f"{c.epochs} epochs (lr {c.lr}, linear), batch {c.batch_size}, Adam; every stack "
        "supervised |",
        f"| hardware | {cpu_model()}, {os.cpu_count()} cores; {device}; {args.jobs} processes "
        "at once, 1 torch thread each |",
        f"| wall time | {wall / 60:.1f} min ({cached} of {len(floats) + len(binary)} runs read "
        "from the cache) |",
    ]
    notes = list(report.NOTES)
    if mode.name == "quick":
        estimate = estimate_full(records, mode, args.jobs)
        notes.append(f"- Estimated wall time of the full mode (`python examples/pose/run.py`) "
                     f"on this machine with {args.jobs} processes, from this run's times: "
                     f"{estimate / 60:.0f} min.")
        print(f"estimated full-mode wall time: {estimate / 60:.0f} min")
    _, _, test = worker.splits(mode.config, args.cache)
    path = report.write(records, args.out, test, header=header, notes=notes,
                        rows=[name for name, *_ in ROWS], effects=EFFECTS)
    write_json(args.out / "results.json", records)
    print(f"wrote {path} in {wall:.0f} s")
    return path


if __name__ == "__main__":
    main()
