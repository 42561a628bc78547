"""RESULTS.md and the plots of the ablation, from the runs' result records.

Accuracies are reported as mean ± sample standard deviation over seeds,
s = sqrt(sum_i (a_i - mean)^2 / (n - 1)) (0 for one seed); the gap to float is
mean(float) - mean(row) in points of test accuracy, each seed's row against the float teacher
of the same dataset. Plots use matplotlib's Agg backend (files only, no display).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after matplotlib.use: the backend is chosen first
from experiments import difference, mean_std
from matplotlib.ticker import MaxNLocator

Record = dict[str, Any]


def group(records: Iterable[Record]) -> dict[tuple[str, str, str], list[Record]]:
    """Records by (dataset, row name, budget), each list ordered by seed."""
    groups: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
    for record in records:
        groups[record["dataset"], record["name"], record["budget"]].append(record)
    return {key: sorted(rows, key=lambda r: r["seed"]) for key, rows in groups.items()}


def _pct(values: Sequence[float]) -> str:
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f} ± {std:.2f}"


def main_table(groups: dict, dataset: str, names: Sequence[str]) -> list[str]:
    """Markdown rows: float, then each binary row at the short budget."""
    floats = groups[dataset, "float", "short"]
    float_mean = mean_std([r["test_accuracy"] for r in floats])[0]
    lines = [
        "| row | test accuracy % (mean ± std) | gap to float (points) | packed runtime "
        "accuracy % | runtime = PyTorch top-1 | s / epoch |",
        "|---|---|---|---|---|---|",
        f"| float resnet_small | {_pct([r['test_accuracy'] for r in floats])} | - | - | - | "
        f"{mean_std([r['seconds_per_epoch'] for r in floats])[0]:.1f} |",
    ]
    for name in names:
        rows = groups[dataset, name, "short"]
        accuracy = [r["test_accuracy"] for r in rows]
        gap = 100 * (float_mean - mean_std(accuracy)[0])
        agreement = min(r["runtime_agreement"] for r in rows)
        lines.append(
            f"| {name} | {_pct(accuracy)} | {gap:.2f} | "
            f"{_pct([r['runtime_accuracy'] for r in rows])} | {100 * agreement:.2f}% (min) | "
            f"{mean_std([r['seconds_per_epoch'] for r in rows])[0]:.1f} |"
        )
    return lines


def ladder_table(groups: dict, dataset: str, names: Sequence[str]) -> list[str]:
    """Markdown rows: what each rung of the ladder adds to the rung before it."""
    lines = ["| rung | change over the rung before (points, ± standard error) | verdict |",
             "|---|---|---|"]
    for before, after in itertools.pairwise(names):
        a = [r["test_accuracy"] for r in groups[dataset, before, "short"]]
        b = [r["test_accuracy"] for r in groups[dataset, after, "short"]]
        diff, se, verdict = difference(a, b)
        lines.append(f"| {after} | {diff:+.2f} ± {se:.2f} | {verdict} |")
    return lines


def question_table(
    groups: dict, dataset: str, epochs: dict[str, int], a: tuple[str, str], b: tuple[str, str]
) -> list[str]:
    """Markdown rows: variant b minus variant a for reactnet and dybnn at both budgets; a and b
    are (column label, row-name suffix), e.g. ("one stage", "one stage")."""
    (label_a, suffix_a), (label_b, suffix_b) = a, b
    lines = [
        f"| recipe | epochs | {label_a} % | {label_b} % | {label_b} - {label_a} (points, ± "
        f"standard error) | verdict for {label_b} |",
        "|---|---|---|---|---|---|",
    ]
    for recipe in ("reactnet", "dybnn"):
        for budget in ("short", "long"):
            first = [r["test_accuracy"] for r in groups[dataset, f"{recipe} {suffix_a}", budget]]
            second = [r["test_accuracy"] for r in groups[dataset, f"{recipe} {suffix_b}", budget]]
            diff, se, verdict = difference(first, second)
            lines.append(
                f"| {recipe} | {epochs[budget]} | {_pct(first)} | {_pct(second)} | {diff:+.2f} ± "
                f"{se:.2f} | {verdict} |"
            )
    return lines


def plot_accuracy(groups: dict, datasets: Sequence[str], names: Sequence[str], path: Path) -> None:
    """Test accuracy per row with error bars (± one std over seeds), one panel per dataset."""
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        stats = [mean_std([100 * r["test_accuracy"] for r in groups[dataset, n, "short"]])
                 for n in names]
        ax.errorbar(range(len(names)), [m for m, _ in stats], yerr=[s for _, s in stats],
                    fmt="o", capsize=4)
        float_mean = mean_std([100 * r["test_accuracy"] for r in groups[dataset, "float", "short"]])
        ax.axhline(float_mean[0], linestyle="--", color="gray", label="float teacher")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.legend(loc="best")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(groups: dict, datasets: Sequence[str], names: Sequence[str], path: Path) -> None:
    """Validation accuracy per epoch (mean over seeds): the short-budget rows, and the
    schedule question's long-budget rows; one row of panels per dataset."""
    long_names = ["reactnet one stage", "reactnet two stages", "dybnn one stage",
                  "dybnn two stages"]
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.2 * len(datasets)), squeeze=False)
    for (ax_short, ax_long), dataset in zip(axes, datasets):
        for ax, budget, rows in ((ax_short, "short", ["float", *names]),
                                 (ax_long, "long", long_names)):
            for name in rows:
                runs = groups.get((dataset, name, budget))
                if not runs:
                    continue
                curves = list(zip(*[r["val_accuracy"] for r in runs]))
                ax.plot(range(1, len(curves) + 1), [100 * mean_std(c)[0] for c in curves],
                        marker="o", markersize=3, label=name)
            ax.set_title(f"{dataset}: {budget} budget")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("validation accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(
    records: Sequence[Record],
    out: Path,
    *,
    datasets: Sequence[str],
    names: Sequence[str],
    ladder: Sequence[str],
    epochs: dict[str, int],
    header: Sequence[str],
    notes: Sequence[str],
) -> Path:
    """Write RESULTS.md, accuracy.png and curves.png into `out`; returns RESULTS.md's path."""
    groups = group(records)
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(groups, datasets, names, out / "accuracy.png")
    plot_curves(groups, datasets, names, out / "curves.png")
    lines = [f"# Binarization ablation: {' and '.join(datasets)}", "", *header, ""]
    for dataset in datasets:
        lines += [f"## {dataset}", "", *main_table(groups, dataset, names), ""]
        lines += [f"What each rung adds ({dataset}, {epochs['short']} epochs):", ""]
        lines += [*ladder_table(groups, dataset, ladder), ""]
        if (dataset, "reactnet one stage", "short") in groups:
            lines += [f"One stage vs two stages ({dataset}):", ""]
            stages = ("one stage", "one stage"), ("two stages", "two stages")
            lines += [*question_table(groups, dataset, epochs, *stages), ""]
        if (dataset, "reactnet labels only", "short") in groups:
            lines += [f"Distillation from the float teacher vs the labels only ({dataset}):", ""]
            losses = ("distributional (papers')", "one stage"), ("labels", "labels only")
            lines += [*question_table(groups, dataset, epochs, *losses), ""]
    lines += ["![test accuracy per row](accuracy.png)", "", "![training curves](curves.png)", ""]
    lines += ["## Notes", "", *notes, ""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines))
    return path
