"""Cost of one training step of a converted network against its float original.

    python benchmarks/bench_train.py [--widths 16 32] [--batch-size 128] [--threads 1]
                                     [--repeats 15] [--recipes xnor bireal ...] [--profile dybnn]

In one process, for every recipe: one training step (forward, backward, Adam step) of the
float `resnet_small` and of its converted student (all binary: the state of the second stage,
the costlier one), both on cross-entropy so that only the network differs, at the same batch
size and thread count; the teacher's forward (what distillation adds) is timed on its own.
Float and binary steps alternate inside each repeat so that load on the machine hits both
alike; min and median over the repeats. Writes benchmarks/RESULTS_train.md. Target: the
binary step at most 1.3x the float step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from result_file import write_result
from tabulate import tabulate
from torch import nn

import binarize
from binarize.models import resnet_small
from binarize.recipes import names as recipe_names
from operators import ApproxSign, DyPReLU, DySign, ProgressiveSign, RPReLU, RSign, SignSTE

RESULTS = Path(__file__).resolve().parent / "RESULTS_train.md"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--recipes", nargs="+", default=recipe_names())
    parser.add_argument("--profile", metavar="RECIPE", help="print torch.profiler's top ops")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS_train.md")
    return parser.parse_args()


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One Adam step of `model` on cross-entropy, as a closure."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def teacher_forward(teacher: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            teacher(x)

    return forward


def seconds(work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure(works: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Times of every work, interleaved: one call of each per repeat, after one warm-up."""
    for work in works.values():
        work()
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            times[name].append(seconds(work))
    return times


def converted(model: nn.Module, recipe: str, x: torch.Tensor) -> binarize.BinaryModel:
    """`model` converted with `recipe`, in training mode, every binarizer on (stage 2)."""
    bnn = binarize.convert(model, recipe=recipe, example_inputs=(x[:2],))
    bnn.train()
    bnn.schedule.finalize(bnn)
    return bnn


def profile(step: Callable[[], None], title: str) -> None:
    from torch.profiler import profile as torch_profile

    step()
    with torch_profile() as prof:
        for _ in range(3):
            step()
    print(f"\n{title}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def bench_width(args: argparse.Namespace, width: int) -> list[list[str]]:
    """One table row per recipe for `resnet_small(width)`."""
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch_size,))
    model = resnet_small(num_classes=10, width=width).train()
    rows = []
    for recipe in args.recipes:
        bnn = converted(model, recipe, x)
        works = {
            "float": train_step(model, x, y),
            "binary": train_step(bnn, x, y),
            "teacher": teacher_forward(bnn.teacher, x),
        }
        times = measure(works, args.repeats)
        low = {name: min(t) for name, t in times.items()}
        mid = {name: statistics.median(t) for name, t in times.items()}
        rows.append(
            [
                width,
                recipe,
                f"{1e3 * low['float']:.1f} / {1e3 * mid['float']:.1f}",
                f"{1e3 * low['binary']:.1f} / {1e3 * mid['binary']:.1f}",
                f"{low['binary'] / low['float']:.2f}x / {mid['binary'] / mid['float']:.2f}x",
                f"{1e3 * low['teacher']:.1f} / {1e3 * mid['teacher']:.1f}",
                f"{(low['binary'] + low['teacher']) / low['float']:.2f}x",
            ]
        )
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
        if recipe == args.profile:
            profile(works["float"], f"float step, width {width}")
            profile(works["binary"], f"{recipe} step, width {width}")
    return rows


def module_costs(args: argparse.Namespace, width: int) -> list[list[str]]:
    """Forward + backward of each activation-side module on a first-stage activation.

    The modules a recipe adds or swaps around each binary conv, next to what they replace
    (ReLU) and the conv itself, on [batch, width, 28, 28]: where the converted step's extra
    time goes.
    """
    progressive = ProgressiveSign(width)
    progressive.lam.fill_(progressive.lam_max)
    modules = {
        "Conv2d 3x3 (float)": nn.Conv2d(width, width, 3, padding=1, bias=False),
        "BatchNorm2d": nn.BatchNorm2d(width),
        "ReLU": nn.ReLU(),
        "PReLU (torch)": nn.PReLU(width),
        "RPReLU": RPReLU(width),
        "DyPReLU": DyPReLU(width),
        "SignSTE": SignSTE(width),
        "ApproxSign": ApproxSign(width),
        "ProgressiveSign (hard)": progressive,
        "RSign": RSign(width),
        "DySign": DySign(width),
    }
    x = torch.randn(args.batch_size, width, 28, 28)

    def forward_backward(module: nn.Module) -> Callable[[], None]:
        def work() -> None:
            inputs = x.detach().requires_grad_(True)
            module(inputs).sum().backward()

        return work

    times = measure({name: forward_backward(m) for name, m in modules.items()}, args.repeats)
    return [
        [width, name, f"{1e3 * min(t):.2f}", f"{1e3 * statistics.median(t):.2f}"]
        for name, t in times.items()
    ]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for width in args.widths for row in bench_width(args, width)]
    headers = [
        "width",
        "recipe",
        "float step ms (min / median)",
        "binary step ms (min / median)",
        "binary / float (min / median)",
        "teacher forward ms (min / median)",
        "binary + teacher / float (min)",
    ]
    table = tabulate(rows, headers, tablefmt="github")
    print("\n" + table)
    costs = tabulate(
        [row for width in args.widths for row in module_costs(args, width)],
        ["width", "module", "forward + backward ms (min)", "(median)"],
        tablefmt="github",
    )
    print("\n" + costs)
    if not args.no_write:
        write_result(RESULTS, report(args, table, costs))
        print(f"\nwritten to {RESULTS}")


def report(args: argparse.Namespace, table: str, costs: str) -> str:
    return (
        "# Training step: converted network vs float network\n\n"
        f"`python benchmarks/bench_train.py --widths {' '.join(map(str, args.widths))} "
        f"--batch-size "
        f"{args.batch_size} --threads {args.threads} --repeats {args.repeats}`\n\n"
        f"Model: `resnet_small(width)` on 1x28x28 inputs, batch {args.batch_size}, "
        f"{args.threads} thread(s), torch {torch.__version__}, {platform.processor() or 'cpu'}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. One step = forward, cross-entropy, backward, Adam "
        "step; the binary network is in its all-binary state (stage 2). Float and binary "
        f"steps alternate in each of {args.repeats} repeats (after a warm-up); min and median. "
        "The teacher's forward is what distillation adds to a binary step.\n\n"
        f"{table}\n\n"
        "## Where the extra time goes\n\n"
        f"Forward + backward of single modules on a [{args.batch_size}, width, 28, 28] "
        "activation (the first stage's), same process, same threads. A converted block "
        "costs its float twin plus, per binary conv, the binarizer and (activation - "
        "ReLU); the convs and BatchNorms are the same in both networks.\n\n"
        f"{costs}\n"
    )


if __name__ == "__main__":
    main()
