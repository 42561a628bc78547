"""The real torchvision zoo, end to end: convert -> calibrate -> fine-tune -> finalize -> pack
-> runtime, and does the runtime give the student's answers?

Needs an environment where ``torchvision`` imports (the test suite never does; it
reproduces the structures by hand in ``tests/test_zoo_structures.py``). No weights are
downloaded: every model is randomly initialised (``weights=None``).

For each model and recipe:

1. ``binarize.convert(model, recipe, example_inputs=(x,))``;
2. BatchNorm calibration: running statistics reset, then the cumulative average
   (``momentum=None``) of a few train-mode forward passes under ``no_grad`` on random inputs,
   so the eval-mode student is well scaled (a random-init network's activations otherwise sit
   at the binarizers' thresholds);
3. one fine-tuning epoch on a handful of random samples (``binarize.finetune``; for the
   segmentation net, whose output is a dict, a hand-written step on ``out['out']``);
4. ``bnn.schedule.finalize(bnn)``, ``binarize.pack``, ``runtime.load``;
5. ``predict`` on random inputs, compared with the eval-mode student: top-1 agreement (per
   pixel for segmentation) and the largest absolute difference. With ``--float64`` (always for
   the 50-layer nets) the student also runs in float64 (``student.double()`` on the same
   inputs in double): float32 itself rounds some pre-activations to the other side of a
   binarizer's threshold, so the float32 student's agreement with the float64 one shows how
   many flips are float32's, not the runtime's.

Each case appends one JSON line to ``--jsonl``; ``--report`` turns the lines into the
markdown table of ``benchmarks/RESULTS_zoo.md``.

    python benchmarks/zoo_check.py --models resnet18,mobilenet_v2 --jsonl zoo.jsonl
    python benchmarks/zoo_check.py --report zoo.jsonl --out benchmarks/RESULTS_zoo.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: name -> (constructor keywords, smallest input side or None); the side is max(that, --size).
MODELS: dict[str, tuple[dict[str, Any], int | None]] = {
    "resnet18": ({}, None),
    "resnet50": ({}, None),
    "resnext50_32x4d": ({}, None),
    "wide_resnet50_2": ({}, None),
    "mobilenet_v2": ({}, None),
    "densenet121": ({}, None),
    "regnet_x_400mf": ({}, None),
    "mobilenet_v3_small": ({}, None),
    "efficientnet_b0": ({}, None),
    "regnet_y_400mf": ({}, None),
    "shufflenet_v2_x1_0": ({}, None),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 96),
    "vgg11_bn": ({}, None),
    "alexnet": ({}, None),
    "convnext_tiny": ({}, None),
    "fcn_resnet50": ({"weights_backbone": None, "aux_loss": False}, None),
    "squeezenet1_1": ({}, None),
    "mnasnet0_5": ({}, None),
    "googlenet": ({"aux_logits": False, "init_weights": True}, None),
}
#: The 50-layer nets: always also compared with a float64 run of the student.
DEEP = {"resnet50", "resnext50_32x4d", "wide_resnet50_2", "fcn_resnet50"}
SEGMENTATION = {"fcn_resnet50"}


def build(name: str) -> Any:
    """The torchvision model ``name``, randomly initialised, in train mode."""
    from torchvision import models
    from torchvision.models import segmentation

    kwargs, _ = MODELS[name]
    factory = getattr(segmentation if name in SEGMENTATION else models, name)
    return factory(weights=None, **kwargs)


def calibrate_batchnorm(model: Any, x: Any, batch_size: int) -> None:
    """Every BatchNorm's running statistics become the plain average over ``x``'s batches.

    With ``momentum=None`` BatchNorm keeps the cumulative mean of the batch statistics.
    """
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for batch in x.split(batch_size):
            model(batch)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def segmentation_step(bnn: Any, x: Any, classes: int, batch_size: int) -> None:
    """One epoch of per-pixel cross-entropy on ``out['out']`` against random labels."""
    import torch
    from torch.nn import functional as F

    steps = -(-len(x) // batch_size)
    bnn.schedule.on_train_begin(bnn, steps, steps)
    optimizer = torch.optim.Adam([p for p in bnn.parameters() if p.requires_grad], lr=1e-4)
    bnn.train()
    for step, batch in enumerate(x.split(batch_size)):
        bnn.schedule.on_step(bnn, step)
        target = torch.randint(0, classes, (len(batch), *batch.shape[2:]))
        loss = F.cross_entropy(bnn(batch)["out"], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _top1(a: np.ndarray, b: np.ndarray) -> float:
    """Share of samples (or pixels: the class axis is 1) whose argmax agrees."""
    return float((a.argmax(1) == b.argmax(1)).mean())


def _close(a: np.ndarray, b: np.ndarray) -> float:
    """Share of samples whose every output is within 1e-4 of ``b``'s, absolute or relative to
    ``b``'s largest magnitude, |a - b| <= 1e-4 * max(1, max|b|): a sample off by more has a
    binary activation on the other side of its threshold somewhere."""
    tolerance = 1e-4 * max(1.0, float(np.abs(b).max()))
    return float((np.abs(a - b) <= tolerance).reshape(len(a), -1).all(axis=1).mean())


def _main_output(y: Any) -> Any:
    return y["out"] if isinstance(y, dict) else y


def check(name: str, recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one model x recipe through the whole path; the row of results."""
    import torch

    import binarize
    import operators
    import runtime

    side = max(MODELS[name][1] or 0, args.size)
    row: dict[str, Any] = {
        "model": name,
        "recipe": recipe,
        "size": side,
        "samples": args.predict,
        "seconds": {},
    }
    seconds = row["seconds"]

    def stage(label: str, fn: Callable[[], Any]) -> Any:
        row["stage"] = label
        start = time.perf_counter()
        result = fn()
        seconds[label] = round(time.perf_counter() - start, 2)
        return result

    torch.manual_seed(0)
    shape = (3, side, side)
    example = torch.randn(2, *shape)
    try:
        model = stage("build", lambda: build(name))
        bnn = stage(
            "convert", lambda: binarize.convert(model, recipe=recipe, example_inputs=(example,))
        )
        row["binary_convs"] = sum(isinstance(m, operators.BinaryConv2d) for m in bnn.modules())
        row["converts"] = True
        calib = torch.randn(args.calibrate, *shape)
        stage("calibrate", lambda: calibrate_batchnorm(bnn, calib, args.batch))
        train_x = torch.randn(args.train, *shape)
        if name in SEGMENTATION:
            stage("finetune", lambda: segmentation_step(bnn, train_x, 21, args.batch))
        else:
            train_y = torch.randint(0, 1000, (args.train,))
            stage(
                "finetune",
                lambda: binarize.finetune(
                    bnn,
                    (train_x, train_y),
                    epochs=1,
                    lr=1e-4,
                    batch_size=args.batch,
                    progress=False,
                ),
            )
        stage("finalize", lambda: bnn.schedule.finalize(bnn))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a soft part left after finalize is a failure
            blob = stage("pack", lambda: binarize.pack(bnn, example_inputs=(example,)))
        row["packs"] = True
        row["file_bytes"] = len(blob)
        packed = stage("load", lambda: runtime.load(blob, threads=1))
        x = torch.randn(args.predict, *shape)
        bnn.eval()

        def student32() -> np.ndarray:
            with torch.no_grad():
                return np.concatenate(
                    [_main_output(bnn(b)).numpy() for b in x.split(args.batch * 2)]
                )

        expected = stage("student", student32)
        got = _main_output(stage("predict", lambda: packed.predict(x.numpy())))
        row["agreement"] = _top1(got, expected)
        row["close"] = _close(got, expected)
        row["max_abs_diff"] = float(np.abs(got.astype(np.float64) - expected).max())
        row["output_scale"] = float(np.abs(expected).max())
        if args.float64 or name in DEEP:

            def student64() -> np.ndarray:
                double = bnn.double()
                with torch.no_grad():
                    return np.concatenate(
                        [_main_output(double(b.double())).numpy() for b in x.split(args.batch * 2)]
                    )

            reference = stage("student64", student64)
            bnn.float()
            row["agreement_f64"] = _top1(got, reference)
            row["student32_vs_f64"] = _top1(expected, reference)
            row["close_f64"] = _close(got, reference)
            row["student32_close_f64"] = _close(expected, reference)
        row["ok"] = True
    except Exception as exc:  # the row records the failure; the run goes on with the next case
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row["traceback"] = traceback.format_exc()
    return row


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.torch_threads)
    names = args.models.split(",") if args.models else list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    for name in names:
        for recipe in args.recipes.split(","):
            row = check(name, recipe, args)
            status = "ok" if row["ok"] else f"FAILED at {row['stage']}: {row['error']}"
            agreement = f" agreement {row['agreement']:.2%}" if "agreement" in row else ""
            print(
                f"{name} {recipe} {row['size']}px: {status}{agreement} {row['seconds']}", flush=True
            )
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


def report(jsonl: Path, out: Path | None, command: str) -> str:
    """RESULTS_zoo.md from the JSON lines (the last row of each model x recipe x size)."""
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        row.setdefault("samples", 256)  # rows written before the count was recorded
        rows[(row["model"], row["recipe"], row["size"])] = row
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# The torchvision zoo through binarize (random init)",
        "",
        f"Date: {time.strftime('%Y-%m-%d')}. CPU: {cpu}, 1 torch thread, runtime threads=1.",
        f"Python {platform.python_version()}; torch and torchvision: see the command's venv.",
        "",
        f"Command: `{command}`",
        "",
        "Per case: convert -> BatchNorm calibration -> 1 fine-tuning epoch -> finalize -> pack "
        "-> runtime.load -> predict on random inputs. Top-1: share of samples (pixels for "
        "fcn_resnet50) whose argmax agrees, runtime vs the eval-mode float32 student; f64: "
        "the runtime and the float32 student each against the student run in float64. "
        "Within 1e-4: share of samples whose every output is within 1e-4 * max(1, max|ref|) "
        "of the float32 student (a sample off by more has some binary activation on the "
        "other side of its threshold). Max diff: largest absolute output difference runtime "
        "vs float32 student (scale: the largest output). Seconds: convert / calibrate / "
        "finetune / pack / predict (runtime, all samples).",
        "",
        "| model | recipe | px | converts | packs | top-1 vs f32 | top-1 vs f64: runtime / "
        "f32 student | within 1e-4 of f32 | within 1e-4 of f64: runtime / f32 student "
        "| max diff (scale) | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for row in rows.values():
        s = row["seconds"]
        times = " / ".join(
            str(s.get(k, "-")) for k in ("convert", "calibrate", "finetune", "pack", "predict")
        )
        f64 = (
            f"{row['agreement_f64']:.2%} / {row['student32_vs_f64']:.2%}"
            if "agreement_f64" in row
            else "-"
        )
        close64 = (
            f"{row['close_f64']:.2%} / {row['student32_close_f64']:.2%}"
            if "close_f64" in row
            else "-"
        )
        diff = (
            f"{row['max_abs_diff']:.2e} ({row['output_scale']:.2g})"
            if "max_abs_diff" in row
            else "-"
        )
        lines.append(
            f"| {row['model']} | {row['recipe']} | {row['size']} "
            f"| {'yes' if row.get('converts') else 'no'} | {'yes' if row.get('packs') else 'no'} "
            f"| {_cell(row, 'agreement', '.2%')} | {f64} | {_cell(row, 'close', '.2%')} "
            f"| {close64} | {diff} | {times} |"
        )
        if not row["ok"]:
            failures.append(
                f"- {row['model']} {row['recipe']} ({row['stage']}): {row['error'][:300]}"
            )
    compared = [row for row in rows.values() if "close_f64" in row]
    if compared:
        runtime_off = sum(round((1 - row["close_f64"]) * row["samples"]) for row in compared)
        student_off = sum(
            round((1 - row["student32_close_f64"]) * row["samples"]) for row in compared
        )
        total = sum(row["samples"] for row in compared)
        lines += [
            "",
            f"Over the {len(compared)} cases with a float64 run ({total} samples): samples "
            f"not within 1e-4 of the float64 student: runtime {runtime_off}, float32 student "
            f"{student_off}.",
        ]
    if failures:
        lines += ["", "## Failures", "", *failures]
    text = "\n".join(lines) + "\n"
    if out is not None:
        from result_file import write_result  # beside this file, on the path when run

        write_result(out, text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated (default: all)")
    parser.add_argument("--recipes", default="reactnet,xnor")
    parser.add_argument("--size", type=int, default=64, help="input side (inception_v3: >= 96)")
    parser.add_argument("--calibrate", type=int, default=64, help="BN calibration samples")
    parser.add_argument("--train", type=int, default=16, help="fine-tuning samples")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--predict", type=int, default=256, help="compared samples")
    parser.add_argument("--float64", action="store_true", help="f64 reference for every net")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--jsonl", default="", help="append one JSON line per case here")
    parser.add_argument("--report", default="", help="write the markdown table from this jsonl")
    parser.add_argument("--out", default="", help="markdown file for --report")
    parser.add_argument("--command", default="", help="command line shown in the report")
    args = parser.parse_args(argv)
    if args.report:
        print(report(Path(args.report), Path(args.out) if args.out else None, args.command))
        return
    run(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
