"""RESULTS.md, skeletons.png and curves.png of the pose example, from the runs' records.

PCKh values are mean ± sample standard deviation over seeds (0 for one seed), in percent.
The gap to float compares a binary row with the float hourglass of the same stacks; the
speed-up is float-PyTorch batch-1 latency / runtime batch-1 latency, both minima over 20
calls on one thread in the same process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import data
import matplotlib.pyplot as plt  # after matplotlib.use: the backend is chosen first
from experiments import difference, mean_std
from matplotlib.ticker import MaxNLocator
from torch import Tensor

Record = dict[str, Any]
NOTES = [
    "- **The data is synthetic** (examples/pose/data.py): rendered stick figures with "
    "realistic proportions and joint limits, clutter, noise, self-occlusion and joints "
    "outside the image; numbers here say nothing about real photographs.",
    "- PCKh@0.5: a visible joint is correct within half the figure's head segment (top of "
    "head to neck); joints outside the image are not counted. Predictions are the arg-max "
    "of the last stack's 16x16 heatmaps moved a quarter pixel toward the higher neighbour.",
    "- Heatmap distillation: every stack also regresses the float teacher's heatmaps of the "
    "same stack (MSE, weight 1) on top of the MSE to the targets.",
    "- The gap to float compares with the float hourglass of the same stacks (its mean over "
    "its seeds); the speed-up is float PyTorch / packed runtime at batch 1, one thread.",
    "- 'runtime - PyTorch' is the largest difference over seeds between the packed file's "
    "PCKh (run by `runtime`) and the PyTorch student's, in points.",
]


def _pct(values: Sequence[float]) -> str:
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f} ± {std:.2f}"


def _groups(records: Sequence[Record]) -> dict[tuple[str, int], list[Record]]:
    groups: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in records:
        groups[r["name"], r["stacks"]].append(r)
    return {key: sorted(rows, key=lambda r: r["seed"]) for key, rows in groups.items()}


def main_table(groups: dict, rows: Sequence[str]) -> list[str]:
    lines = [
        "| row | stacks | seeds | PCKh@0.5 % | gap to float (points) | packed runtime PCKh % | "
        "runtime - PyTorch (points) | runtime ms | float PyTorch ms | speed-up | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stacks in (1, 2, 3):
        floats = groups.get(("float", stacks), [])
        if floats:
            lines.append(
                f"| float hourglass | {stacks} | {len(floats)} | "
                f"{_pct([r['pck'] for r in floats])} | - | - | - | - | "
                f"{mean_std([r['torch_ms'] for r in floats])[0]:.2f} | - | "
                f"{mean_std([r['seconds_per_epoch'] for r in floats])[0]:.1f} |"
            )
    for (name, stacks), runs in sorted(groups.items(), key=lambda kv: _order(kv[0], rows)):
        if name == "float":
            continue
        float_mean = mean_std([r["pck"] for r in groups[("float", stacks)]])[0]
        gap = 100 * (float_mean - mean_std([r["pck"] for r in runs])[0])
        worst = max((r["runtime_minus_torch_points"] for r in runs), key=abs)
        runtime_ms = mean_std([r["runtime_ms"] for r in runs])[0]
        torch_ms = mean_std([r["float_torch_ms"] for r in runs])[0]
        lines.append(
            f"| {name} | {stacks} | {len(runs)} | {_pct([r['pck'] for r in runs])} | {gap:.2f} | "
            f"{_pct([r['runtime_pck'] for r in runs])} | {worst:+.2f} | {runtime_ms:.2f} | "
            f"{torch_ms:.2f} | {torch_ms / runtime_ms:.1f}x | "
            f"{mean_std([r['seconds_per_epoch'] for r in runs])[0]:.1f} |"
        )
    return lines


def _order(key: tuple[str, int], rows: Sequence[str]) -> int:
    return rows.index(key[0]) if key[0] in rows else -1


def joint_table(groups: dict, keys: Sequence[tuple[str, int]]) -> list[str]:
    """Per-joint PCKh (mean over seeds) of the rows `keys`."""
    lines = [
        "| row | " + " | ".join(data.JOINTS) + " |",
        "|---|" + "---|" * len(data.JOINTS),
    ]
    for key in keys:
        runs = groups.get(key)
        if not runs:
            continue
        means = [mean_std([r["pck_per_joint"][j] for r in runs])[0] for j in range(14)]
        lines.append(f"| {key[0]} ({key[1]}) | " + " | ".join(f"{100 * m:.0f}" for m in means)
                     + " |")
    return lines


def effects_table(groups: dict, effects: Sequence[tuple[str, str, str, int, int]]) -> list[str]:
    """Markdown rows: PCKh of row b minus row a (points, ± standard error over seeds) and a
    verdict (experiments.difference: beyond twice the standard error or within noise)."""
    lines = ["| question | a | b | b - a (points, ± standard error) | verdict for b |",
             "|---|---|---|---|---|"]
    for question, name_a, name_b, stacks_a, stacks_b in effects:
        a, b = groups.get((name_a, stacks_a)), groups.get((name_b, stacks_b))
        if not a or not b:
            continue
        diff, se, verdict = difference([r["pck"] for r in a], [r["pck"] for r in b])
        if min(len(a), len(b)) < 2:
            verdict = "one seed: no verdict"
        lines.append(f"| {question} | {name_a} ({stacks_a}) | {name_b} ({stacks_b}) | "
                     f"{diff:+.2f} ± {se:.2f} | {verdict} |")
    return lines


def plot_skeletons(groups: dict, test: dict[str, Tensor], path: Path) -> None:
    """A few test images: predicted (colour) vs true (white) skeletons, float 2-stack and
    binary (reactnet) 2-stack side by side (seed 0)."""
    pairs = [("float", 2), ("reactnet, 2 stacks", 2)]
    shown = [(name, groups[key][0]) for name, key in zip(("float", "binary (reactnet)"), pairs)
             if key in groups]
    n = min(4, len(test["images"]))
    fig, axes = plt.subplots(n, len(shown), figsize=(3 * len(shown), 3 * n), squeeze=False)
    for i in range(n):
        image = (test["images"][i].permute(1, 2, 0).numpy() * 0.25 + 0.5).clip(0, 1)
        truth = test["joints"][i].numpy()
        visible = test["visible"][i].numpy() > 0
        for ax, (label, record) in zip(axes[i], shown):
            predicted = record["examples"][i]
            ax.imshow(image)
            for a, b in data.BONES:
                if visible[a] and visible[b]:
                    ax.plot(truth[[a, b], 0], truth[[a, b], 1], color="white", lw=2)
                ax.plot([predicted[a][0], predicted[b][0]], [predicted[a][1], predicted[b][1]],
                        color="red", lw=1.2)
            ax.set_xlim(-0.5, data.SIZE - 0.5)
            ax.set_ylim(data.SIZE - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{label}: red predicted, white true", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(groups: dict, path: Path) -> None:
    """Validation MSE of the last stack's heatmaps per epoch (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, stacks), runs in sorted(groups.items()):
        curves = list(zip(*[r["val_heatmap_mse"] for r in runs]))
        label = f"{name} ({stacks})" if name == "float" else name
        ax.plot(range(1, len(curves) + 1), [mean_std(c)[0] for c in curves], marker="o",
                markersize=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation heatmap MSE (last stack)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(records: Sequence[Record], out: Path, test: dict[str, Tensor], *,
          header: Sequence[str], notes: Sequence[str], rows: Sequence[str],
          effects: Sequence[tuple[str, str, str, int, int]] = ()) -> Path:
    """Write RESULTS.md, skeletons.png and curves.png into `out`; returns RESULTS.md's path."""
    groups = _groups(records)
    out.mkdir(parents=True, exist_ok=True)
    differences = [abs(r["runtime_minus_torch_points"]) for r in records if r["recipe"]]
    reproduced = "yes" if max(differences) <= 0.1 else "**no**"
    notes = [f"- Every packed model reproduces its PyTorch PCKh within 0.1 points: {reproduced} "
             f"(largest difference {max(differences):.2f} points over "
             f"{len(differences)} packed models).", *notes]
    plot_skeletons(groups, test, out / "skeletons.png")
    plot_curves(groups, out / "curves.png")
    lines = [
        "# Binary human-pose estimation on SYNTHETIC stick figures", "",
        "**Synthetic data**: every image is a rendered stick figure (examples/pose/data.py), "
        "not a photograph.", "", *header, "",
        "## PCKh@0.5 (test images, last stack)", "", *main_table(groups, rows), "",
        "## What stacking, distillation and the recipe change", "",
        *effects_table(groups, effects), "",
        "## PCKh@0.5 per joint (%)", "",
        *joint_table(groups, [("float", 2), ("reactnet, 2 stacks", 2),
                              ("reactnet, 2 stacks, no distillation", 2), ("bulat, 2 stacks", 2)]),
        "",
        "![predicted vs true skeletons](skeletons.png)", "",
        "![validation curves](curves.png)", "",
        "## Notes", "", *notes, "",
    ]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines))
    return path
