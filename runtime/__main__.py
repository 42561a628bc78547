"""Command line: describe, time, profile or warm up packed models (numpy + argparse only).

    python -m runtime info model.bnn                  # inputs, outputs, op counts, sizes, plan
    python -m runtime bench model.bnn --batch 1 32 --threads 1 2 --repeats 30
    python -m runtime profile model.bnn --batch 8 --repeats 10
    python -m runtime warmup [model.bnn ...]          # compile the kernels into numba's cache

``bench`` and ``profile`` feed seeded standard-normal float32 inputs of the model's input
shapes. ``--batch`` and ``--threads`` take one or more values; ``bench`` prints one latency row
(min and median over ``--repeats`` calls, after one warm-up call) per combination, and with
more than one thread the second-thread probe of runtime/cores.py before and after the rows
(what a second thread buys pure vector work on this machine at the time), ``profile``
one per-step table (runtime/profile.py) per combination. ``warmup`` (runtime/warmup.py)
predicts on each given model, or without models on tiny graphs that reach every kernel of
the runtime, so numba compiles them into its cache (``NUMBA_CACHE_DIR``) and a later process
only loads them; it prints each kernel's compiled / loaded specializations. Exit status 0,
or 2 with a message for a bad file or bad options, or 1 when a warm-up without models left
a kernel of the runtime uncompiled (named).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence

import numba
import numpy as np

from runtime.cores import second_thread_gain
from runtime.errors import RuntimeModelError
from runtime.model import Model, load
from runtime.threads import layer_in_use
from runtime.warmup import sample_inputs, warmup


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb == "info":
            print(_info(args.model, load(args.model)))
        elif args.verb == "warmup":
            report = warmup(args.models)
            print(report.table())
            if not args.models and report.missing:
                print(
                    f"python -m runtime warmup: no graph reached {', '.join(report.missing)}; "
                    "add the attrs that route an op to it to VARIANTS in runtime/warmup.py",
                    file=sys.stderr,
                )
                return 1
        elif args.verb == "bench":
            print(_bench(args.model, args.batch, args.threads, args.repeats))
        else:
            for threads in args.threads:
                for batch in args.batch:
                    profiled = load(args.model, threads=threads)
                    print(profiled.profile(sample_inputs(profiled, batch), args.repeats).table())
                    print()
    except (OSError, RuntimeModelError, ValueError) as error:
        print(f"python -m runtime {args.verb}: {error}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime",
        description="Describe, time, profile or warm up packed .bnn models.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("info", help="inputs, outputs, op counts, parameter bytes, the plan")
    for verb, about, repeats in (
        ("bench", "latency table: min and median milliseconds per predict", 20),
        ("profile", "per-step time, share, MACs and MACs per cycle", 10),
    ):
        sub = verbs.add_parser(verb, help=about)
        sub.add_argument("--batch", type=_positive, nargs="+", default=[1], metavar="N")
        sub.add_argument(
            "--threads",
            type=_positive,
            nargs="+",
            default=[numba.config.NUMBA_NUM_THREADS],
            metavar="N",
            help="numba threads (default: all of numba's pool)",
        )
        sub.add_argument("--repeats", type=_positive, default=repeats, metavar="N")
    for sub in verbs.choices.values():
        sub.add_argument("model", help="path of a packed model (binarize.pack)")
    verbs.add_parser(
        "warmup", help="compile the kernels of the given models (default: all) into numba's cache"
    ).add_argument("models", nargs="*", metavar="model", help="packed models (binarize.pack)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _info(path: str, model: Model) -> str:
    nodes = [node for step in model.plan for node in step.nodes]
    ops = Counter(node.op for node in nodes)
    params = sum(step.param_count for step in model.plan)
    param_bytes = sum(step.param_bytes for step in model.plan)
    lines = [
        f"model: {path} ({os.path.getsize(path):,} bytes)",
        "inputs:",
        *(f"  {s.name} {_shape(s.shape)} {s.dtype}" for s in model.inputs),
        "outputs:",
        *(f"  {s.name} {_shape(s.shape)} {s.dtype}" for s in model.outputs),
        f"ops: {len(nodes)} nodes in {len(model.plan)} steps",
        *(f"  {op}: {count}" for op, count in sorted(ops.items())),
        f"parameters: {params:,} ({param_bytes:,} bytes)",
        "",
        "plan:",
        model.summary(),
    ]
    return "\n".join(lines)


def _bench(path: str, batches: Sequence[int], threads: Sequence[int], repeats: int) -> str:
    rows = [("threads", "batch", "min ms", "median ms", "min ms/sample", "samples/s")]
    probe_before = second_thread_gain() if max(threads) > 1 else None
    for count in threads:
        model = load(path, threads=count)
        for batch in batches:
            x = sample_inputs(model, batch)
            model.predict(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model.predict(x)
                times.append(time.perf_counter() - start)
            best, median = min(times), float(np.median(times))
            rows.append(
                (
                    str(count),
                    str(batch),
                    f"{best * 1e3:.3f}",
                    f"{median * 1e3:.3f}",
                    f"{best * 1e3 / batch:.3f}",
                    f"{batch / best:,.0f}",
                )
            )
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    layer = layer_in_use() or "none (no parallel loop ran)"
    lines.append(f"min and median of {repeats} calls after one warm-up; numba layer: {layer}")
    if probe_before is not None:  # None: one thread asked for, or numba has only one
        lines.append(
            f"second-thread probe (runtime/cores.py): pure FMA work ran {probe_before:.2f}x "
            f"as fast on 2 threads as on 1 before these runs, {second_thread_gain():.2f}x "
            "after (2.0x on two cores of its own; less: another program shares them)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
