"""Ablation of binarization techniques on Fashion-MNIST and MNIST (`make ablation`).

    python examples/classification/ablation.py            # full: both datasets, 3 seeds
    python examples/classification/ablation.py --quick    # Fashion-MNIST, 3 seeds, < 20 min
    python examples/classification/ablation.py --smoke    # seconds: synthetic data, 1 seed

One float ResNet (`binarize.models.resnet_small`, width 16) is trained once per dataset and
seed and cached; every binary row converts that teacher with one recipe
(`binarize.convert`), fine-tunes it for the same number of epochs (`binarize.finetune`),
and is evaluated in PyTorch and, packed (`binarize.pack`), in the Numba runtime. The rows:

- the ladder (rows.py): naive sign+STE with the ReLUs kept -> + PReLU -> + reverse-order two
  stages -> + progressive lambda -> + distillation, which is the `bulat` recipe;
- the recipes xnor, bireal, reactnet and dybnn as registered;
- the schedule question (Fashion-MNIST only): reactnet and dybnn with one stage and with
  two, at the base budget and at 3x that;
- the distillation question (Fashion-MNIST only): reactnet and dybnn (one stage) on the
  labels only, without their distributional loss from the float teacher, at both budgets.

Modes (all use one torch thread per process and `--jobs` processes at once, 2 by default;
CUDA when present):

=======  ===================  =====  ========================  ==============  ==========
mode     data                 seeds  train / val / test         epochs (float,  wall time,
                                     images                     base, long)     2 cores
=======  ===================  =====  ========================  ==============  ==========
full     Fashion-MNIST+MNIST  3      4000 / 500 / 2000          3, 2, 6         see below
quick    Fashion-MNIST        3      2000 / 500 / 1000          3, 2, 6         < 20 min
smoke    synthetic (28x28)    1      128 / 32 / 64              3, 1, 2         seconds
=======  ===================  =====  ========================  ==============  ==========

The budgets are epochs of the same images for every row. What sets them is the cost of
binary fine-tuning on a 2-core CPU: about 5 ms per image-epoch per process with two
processes running (measured on a 2-core EPYC, teacher forward and validation included;
the float ResNet about 1.5 ms), so that 3 seeds x 15 runs on Fashion-MNIST plus 3 x 9 on
MNIST fit well inside 90 minutes only at a few thousand images and a couple of epochs.
RESULTS.md states the measured wall time of the run it reports, and the quick mode writes
its estimate of the full mode's. The quick mode keeps three seeds and one dataset rather
than two datasets with fewer seeds: a mean ± std needs the seeds, and Fashion-MNIST is the
one the schedule question runs on (on MNIST it would add 12 runs per seed).

Results go to examples/classification/RESULTS.md with accuracy.png and curves.png
(`--out`); each finished run is cached as JSON under .cache/ablation/ (`--cache`), so an
interrupted ablation resumes and a finished one re-renders its report in seconds.
Fashion-MNIST and MNIST must be installed (`make data`); nothing is downloaded.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # rows, worker, report beside it

import report
import rows
import worker
from experiments import cpu_model, run_tasks, write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass(frozen=True)
class Mode:
    """The data, seeds and budgets of one mode; the schedule question runs on
    `schedule_datasets` only (it is 12 of the 21 runs of a dataset and seed)."""

    name: str
    datasets: tuple[str, ...]
    seeds: int
    config: worker.Config
    schedule_datasets: tuple[str, ...] = ("fashion-mnist", "synthetic")


MODES = {
    "full": Mode("full", ("fashion-mnist", "mnist"), 3, worker.Config(4000, 500, 2000, 3, 2, 3)),
    "quick": Mode("quick", ("fashion-mnist",), 3, worker.Config(2000, 500, 1000, 3, 2, 3)),
    "smoke": Mode(
        "smoke", ("synthetic",), 1, worker.Config(128, 32, 64, 3, 1, 2, width=8, batch_size=32)
    ),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="Fashion-MNIST, < 20 min on 2 cores")
    which.add_argument("--smoke", action="store_true", help="synthetic data, seconds (tests)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs at once, one process and one torch thread each")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: the mode's)")
    parser.add_argument("--datasets", nargs="+", choices=[*worker.LOADERS, "synthetic"],
                        help="datasets (default: the mode's)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of RESULTS.md and plots")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "ablation",
                        help="folder of the cached float teachers and run results")
    return parser.parse_args(argv)


def tasks_of(mode: Mode, seeds: int, datasets: Sequence[str], cache: Path) -> tuple[list, list]:
    """(float tasks, binary tasks): one teacher per dataset and seed, then every row."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = {"config": mode.config, "cache": cache, "device": device}
    floats = [worker.Task(d, s, **common) for d in datasets for s in range(seeds)]
    binary = [
        worker.Task(d, s, name=row.name, recipe=row.recipe, budget=row.budget, **common)
        for d in datasets
        for s in range(seeds)
        for row in rows.all_rows()
        if row.group not in rows.QUESTIONS or d in mode.schedule_datasets
    ]
    binary.sort(key=lambda t: -t.epochs)  # longest first: the pool ends with short runs
    return floats, binary


def run_all(tasks: Sequence[worker.Task], jobs: int, done: list[dict[str, Any]]) -> None:
    """Run `tasks` on `jobs` processes (in this process when 1), appending their records.

    Rows that are the same run (a registered recipe equal to one of the schedule
    question's variants: same recipe, budget, data and seed) run once; each row gets its own
    copy of the record, under its own name.
    """
    by_key: dict[Path, list[worker.Task]] = {}
    for task in tasks:
        by_key.setdefault(task.result_path, []).append(task)

    def report_one(record: dict[str, Any], same: list[worker.Task]) -> None:
        for task in same:
            done.append({**record, "name": task.name})
            print(
                f"[{len(done)}] {task.dataset} seed {task.seed} {task.name} "
                f"({record['epochs']} epochs): {100 * record['test_accuracy']:.2f}% "
                f"in {record['wall_seconds']:.0f} s", flush=True,
            )

    run_tasks([same[0] for same in by_key.values()], jobs, worker.run,
              lambda task, record: report_one(record, by_key[task.result_path]))


def estimate_full(records: Sequence[dict[str, Any]], measured: Mode, jobs: int) -> float:
    """Wall seconds the full mode would take on `jobs` processes, from these records.

    Per run, training time scales with epochs x training images and the rest (convert,
    evaluation, pack, runtime) with test images: for each full-mode run of a row,
    t = train_s * (E_full / E_measured) * (N_full / N_measured)
        + other_s * (T_full / T_measured),
    averaged over the measured seeds; summed over the full mode's datasets (each with its
    rows: the schedule question only on `schedule_datasets`) and seeds, divided by `jobs`.
    """
    full, m = MODES["full"], measured.config
    f = full.config
    schedule_rows = {row.name for row in rows.all_rows() if row.group in rows.QUESTIONS}
    per_row: dict[tuple[str, str], list[float]] = {}
    unique = {(r["dataset"], r["seed"], r["epochs"], r["test_accuracy"], r["wall_seconds"]): r
              for r in records}  # a run reported under two names counts once
    for r in unique.values():
        n_ratio = (f.n_train + f.n_val) / (m.n_train + m.n_val)
        full_epochs = f.float_epochs if r["name"] == "float" else f.epochs_of(r["budget"])
        t = (r["train_seconds"] * full_epochs / r["epochs"] * n_ratio
             + r["other_seconds"] * f.n_test / m.n_test)
        per_row.setdefault((r["name"], r["budget"]), []).append(t)
    total = 0.0
    for dataset in full.datasets:
        for (name, _), times in per_row.items():
            if name not in schedule_rows or dataset in full.schedule_datasets:
                total += sum(times) / len(times)
    return total * full.seeds / jobs


def compute_minutes(records: Sequence[dict[str, Any]], jobs: int) -> float:
    """Wall minutes the runs took when they ran: the sum of their own wall times (a run
    reported under two names counted once) divided by the processes sharing the machine."""
    unique = {(r["dataset"], r["seed"], r["budget"], r["epochs"], r["wall_seconds"])
              for r in records}
    return sum(key[-1] for key in unique) / jobs / 60


def header(mode: Mode, args: argparse.Namespace, seeds: int, datasets: Sequence[str],
           wall: float, cached: int, total: int, records: Sequence[dict[str, Any]]) -> list[str]:
    c = mode.config
    device = (f"CUDA ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU")
    return [
        f"Generated by `python examples/classification/ablation.py {' '.join(sys.argv[1:])}`"
        f" (mode **{mode.name}**) on {datetime.date.today().isoformat()}.",
        "",
        "| | |",
        "|---|---|",
        f"| datasets | {', '.join(datasets)} |",
        f"| seeds | {', '.join(str(s) for s in range(seeds))} (each its own training subset, "
        "float teacher and binary runs) |",
        f"| images | {c.n_train} train, {c.n_val} validation (held out of the training set), "
        f"{c.n_test} test |",
        f"| model | `resnet_small(width={c.width})`, batch {c.batch_size}, Adam |",
        f"| float teacher | {c.float_epochs} epochs, lr {c.float_lr}, cosine |",
        f"| binary rows | {c.epochs} epochs (long budget {c.epochs_of('long')}), lr {c.lr}, "
        "linear decay; the recipe's stages, ramp and loss |",
        f"| hardware | {cpu_model()}, {os.cpu_count()} cores; {device}; {args.jobs} processes "
        "at once, 1 torch thread each |",
        f"| wall time | this invocation {wall / 60:.1f} min ({cached} of {total} runs read from "
        f"the cache); all the runs when they ran: {compute_minutes(records, args.jobs):.0f} min "
        f"on {args.jobs} processes (the sum of the runs' own wall times / {args.jobs}) |",
    ]


NOTES = [
    "- Row 1 keeps the ResNet's ReLUs in front of the signs: every binary conv reads a ReLU "
    "output and sign(relu(x)) = +1 everywhere, so its binary convs see a constant input; "
    "what it reaches comes from the float stem, shortcuts, 1x1 projections and classifier.",
    "- Rows 2-5 each add one technique to the row above (rows.py); row 5 is the registered "
    "`bulat` recipe, checked equal to it by tests/test_examples_smoke.py.",
    "- Two-stage rows train with float weights in their first half: their validation curve "
    "drops when the weights turn binary.",
    "- The recipe rows are the recipes as registered: reactnet and dybnn train in one stage "
    "on the labels (their defaults, chosen from the schedule and distillation tables here); "
    "the papers' two stages are the schedule table's 'two stages' column, their "
    "distributional loss the distillation table's first column (the schedule table's rows "
    "all use it).",
    "- The distributional loss makes the student imitate a teacher trained only 3 epochs, "
    "and the labels-only student passes that teacher (dybnn at 6 epochs: 79.08% vs 76.45%). "
    "That is not a binary network beating float: the float resnet_small trained 9 epochs "
    "(the teacher's 3 plus the student's 6) on the same data reaches 84.25 ± 0.79% (seeds "
    "0-2, `worker.Config(4000, 500, 2000, 9, 2, 3)`, measured beside this run). From that "
    "9-epoch teacher, dybnn at 6 epochs reaches 80.02 ± 0.93% on the labels and 79.62 ± "
    "0.59% distilled, within noise: 4.2 points below that float network.",
    "- The budgets are short: 2 epochs of 4000 images are 62 optimizer steps. The spreads "
    "over seeds (on MNIST up to ±29 points) say binary training has not settled there; a "
    "verdict is 'helps' or 'hurts' only when the difference is beyond twice its standard "
    "error (experiments.difference).",
    "- 'packed runtime accuracy' is the `binarize.pack`ed file run by `runtime`; 'runtime = "
    "PyTorch top-1' is the smallest share, over seeds, of test images where the runtime's "
    "top-1 equals the fine-tuned PyTorch student's.",
    "- s / epoch is the mean wall time of one fine-tuning epoch (validation included) in one "
    "process of one torch thread, with the other process(es) running beside it; other jobs "
    "shared the machine for part of the run, so compare it only roughly.",
]


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    seeds = args.seeds or mode.seeds
    datasets = tuple(args.datasets or mode.datasets)
    started = time.perf_counter()
    torch.set_num_threads(1)
    floats, binary = tasks_of(mode, seeds, datasets, args.cache)
    cached = sum(t.result_path.exists() for t in [*floats, *binary])
    print(f"ablation ({mode.name}): {len(floats)} float teachers, {len(binary)} binary runs, "
          f"{cached} cached; {args.jobs} processes", flush=True)
    records: list[dict[str, Any]] = []
    run_all(floats, args.jobs, records)  # the binary runs need their teachers
    run_all(binary, args.jobs, records)
    wall = time.perf_counter() - started
    notes = list(NOTES)
    if mode.name == "quick":
        estimate = estimate_full(records, mode, args.jobs)
        notes.append(f"- Estimated wall time of the full mode (`python examples/classification/"
                     f"ablation.py`) on this machine with {args.jobs} processes, from this run's "
                     f"measured times: {estimate / 60:.0f} min (MNIST assumed to cost what "
                     "Fashion-MNIST does).")
        print(f"estimated full-mode wall time: {estimate / 60:.0f} min")
    c = mode.config
    path = report.write(
        records, args.out, datasets=datasets,
        names=[row.name for row in [*rows.ladder(), *rows.other_recipes()]],
        ladder=[row.name for row in rows.ladder()],
        epochs={"short": c.epochs, "long": c.epochs_of("long")},
        header=header(mode, args, seeds, datasets, wall, cached, len(floats) + len(binary),
                      records),
        notes=notes,
    )
    write_json(args.out / "results.json", records)
    print(f"wrote {path} in {wall:.0f} s")
    return path


if __name__ == "__main__":
    main()
