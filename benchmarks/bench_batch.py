"""Batch throughput: Bi-Real-18 in the runtime vs ResNet-18 fp32 in PyTorch, batch 1 and 32.

    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python benchmarks/bench_batch.py [--repeats 10]

For each thread count (1, 2) and batch size (1, 32), one process interleaves the runtime
(benchmarks/bench_bireal18.py, random weights, ``runtime.load(threads=N).predict``) and
PyTorch (``binarize.models.resnet18()``, eval, no_grad, ``torch.set_num_threads(N)``) on
the same 224x224 input, 2 warm-up rounds then ``--repeats`` timed ones. Reported per
configuration: the min and median time per image (call time / batch) and images/s at the
min, and the runtime's speed-up over torch. The question it answers: is the per-image time
at batch 32 no worse than at batch 1 (the runtime works per sample or per cache-sized tile,
never on one huge im2col of the whole chunk), and how far ahead of torch is the runtime at
batch 32. Writes benchmarks/RESULTS_batch.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_bireal18 import bireal18  # noqa: E402
from bench_runtime import machine  # noqa: E402
from core_probe import probe_note, second_thread_gain  # noqa: E402
from isa import popcount_instruction_counts, seen_popcount_isa  # noqa: E402
from result_file import write_result  # noqa: E402
from targets import Target, targets_table  # noqa: E402
from timing import time_call  # noqa: E402

import runtime  # noqa: E402
from binarize.models import resnet18  # noqa: E402
from runtime.format import write_model  # noqa: E402

THREADS = (1, 2)
BATCHES = (1, 32)


def measure(path: Path, repeats: int) -> dict[tuple[int, int, str], list[float]]:
    """Seconds per image of each (threads, batch, side), interleaved repeat by repeat."""
    net = resnet18().eval()
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in BATCHES}
    models = {t: runtime.load(path, threads=t) for t in THREADS}
    times: dict[tuple[int, int, str], list[float]] = {
        (t, b, side): [] for t in THREADS for b in BATCHES for side in ("runtime", "torch")
    }
    with torch.no_grad():
        for repeat in range(2 + repeats):
            for t in THREADS:
                torch.set_num_threads(t)
                for b, x in inputs.items():
                    xt = torch.from_numpy(x.copy())
                    # who goes first alternates by repeat (see bench_runtime.speed)
                    if repeat % 2:
                        theirs, ours = time_call(net, xt), time_call(models[t].predict, x)
                    else:
                        ours, theirs = time_call(models[t].predict, x), time_call(net, xt)
                    if repeat >= 2:
                        times[t, b, "runtime"].append(ours / b)
                        times[t, b, "torch"].append(theirs / b)
    return times


def report(times: dict[tuple[int, int, str], list[float]], repeats: int,
           probe: tuple[float, float], isa_line: str) -> str:
    lines = [
        "# Batch throughput: Bi-Real-18 (runtime) vs ResNet-18 fp32 (PyTorch)",
        "",
        f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}. Machine: {machine()}.",
        "",
        probe_note(*probe),
        "",
        f"Popcount ISA seen in the assembly (a fresh compile of the bconv inner loops for this"
        f" host): {isa_line}.",
        "",
        f"Command: `NUMBA_CACHE_DIR=.cache/numba .venv/bin/python benchmarks/bench_batch.py "
        f"--repeats {repeats}`. 224x224 inputs, 2 warm-up rounds, {repeats} interleaved "
        "repeats (runtime and torch in turn, who goes first alternating by repeat); ms per "
        "image = call time / batch.",
        "",
        "| threads | batch | runtime ms/image min / median | torch ms/image min / median | "
        "runtime images/s | torch images/s | speed-up (min) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in THREADS:
        for b in BATCHES:
            ours, theirs = times[t, b, "runtime"], times[t, b, "torch"]
            lines.append(
                f"| {t} | {b} | {1e3 * min(ours):.2f} / {1e3 * np.median(ours):.2f} | "
                f"{1e3 * min(theirs):.2f} / {1e3 * np.median(theirs):.2f} | "
                f"{1 / min(ours):.0f} | {1 / min(theirs):.0f} | {min(theirs) / min(ours):.2f}x |"
            )
    lines += ["", "Per-image time at batch 32 over batch 1 (min): " + ", ".join(
        f"runtime {t} thread(s) {min(times[t, 32, 'runtime']) / min(times[t, 1, 'runtime']):.2f}"
        for t in THREADS
    ) + "."]
    lines += ["", *targets_table(batch_targets(times))]
    return "\n".join(lines) + "\n"


def batch_targets(times: dict[tuple[int, int, str], list[float]]) -> list[Target]:
    """Per thread count: per-image time at batch 32 no worse than at batch 1, and images/s
    at batch 32 at least 5x torch's (issue: performance)."""
    targets = []
    for t in THREADS:
        ours, theirs = min(times[t, 32, "runtime"]), min(times[t, 32, "torch"])
        targets += [
            Target(f"per-image time, batch 32 / batch 1, {t} thread(s) (mins)", 1.0,
                   ours / min(times[t, 1, "runtime"]), higher_is_better=False,
                   lever="none in the chunking: at 1 thread, chunks of 1, 2, 4, 8 and 32"
                   " samples gave the same per-image time within this machine's noise"),
            Target(f"images/s at batch 32 vs torch fp32, {t} thread(s) (mins)", 5.0,
                   theirs / ours, lever="the per-image kernels: see RESULTS.md's targets"),
        ]
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS_batch.md")
    args = parser.parse_args()
    probe_start = second_thread_gain()
    graph, tensors = bireal18()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bireal18.bnn"
        write_model(path, graph, tensors)
        times = measure(path, args.repeats)
    text = report(times, args.repeats, (probe_start, second_thread_gain()),
                  seen_popcount_isa(popcount_instruction_counts()))
    write_result(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
