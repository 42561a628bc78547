"""Whole-network speed and size of the packed runtime against float PyTorch ResNet-18.

    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python benchmarks/bench_runtime.py [--repeats 30]

Measures, in one process, interleaving the two so machine load hits both alike:
- a Bi-Real-18 (benchmarks/bench_bireal18.py: ResNet-18 layout, binary 3x3 convs with their
  own shortcuts, float stem / downsample / fc, random weights) run by ``runtime`` against
  ``binarize.models.resnet18`` fp32 in PyTorch (eval, no_grad), batch 1, 224x224, at 1 and 2
  threads (``torch.set_num_threads`` / ``runtime.load(threads=)``): min and median over
  repeats, and the speed-up ratios;
- the packed file size against the float state_dict and against the ideal (1 bit per binary
  weight + 32 bits per float parameter);
- the first ``predict`` in a fresh process with a warm numba cache (a subprocess, run twice:
  the first run fills the cache if needed, the second is reported);
- the 1-thread comparison again in a child compiled for an AVX2-only CPU, torch capped at
  AVX2 (benchmarks/isa.py), with the popcount instructions its assembly holds;
- the targets, each met or short by how much, with the next lever (benchmarks/targets.py).

Writes benchmarks/RESULTS.md with the tables, the command, the machine and the date, and
merges the per-layer table of benchmarks/RESULTS_layers.md (benchmarks/bench_layers.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from bench_bireal18 import bireal18, ideal_bytes  # noqa: E402
from core_probe import probe_note, second_thread_gain  # noqa: E402
from isa import (  # noqa: E402
    avx2_target_env,
    default_avx2_cache,
    host_has_avx512,
    popcount_instruction_counts,
    seen_popcount_isa,
)
from result_file import write_result  # noqa: E402
from targets import Target, targets_table  # noqa: E402
from timing import time_call  # noqa: E402

import binarize  # noqa: E402
import runtime  # noqa: E402
from binarize.models import resnet18  # noqa: E402
from runtime.format import write_model  # noqa: E402
from runtime.kernels.bconv import default_popcount  # noqa: E402
from runtime.kernels.popcount import target_features  # noqa: E402
from runtime.threads import thread_limits  # noqa: E402

THREADS = (1, 2)
FIRST_PREDICT = """
import sys, time, json
t0 = time.perf_counter()
import numpy as np
import runtime
t1 = time.perf_counter()
model = runtime.load(sys.argv[1], threads=1)
t2 = time.perf_counter()
x = np.zeros((1, 3, 224, 224), np.float32)
model.predict(x)
t3 = time.perf_counter()
model.predict(x)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first_predict": t3 - t2,
                  "second_predict": t4 - t3}))
"""


ALONE = """
import sys, time, json
import numpy as np
side, path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
if side == "runtime":  # no torch in this process: a deployed model's situation
    import runtime
    calls = {t: runtime.load(path, threads=t).predict for t in (1, 2)}
    arg = x
else:
    import torch
    from binarize.models import resnet18
    torch.set_grad_enabled(False)
    net = resnet18().eval()
    calls = {t: net for t in (1, 2)}
    arg = torch.from_numpy(x)
times = {t: [] for t in calls}
for repeat in range(3 + repeats):
    for t, call in calls.items():
        if side == "torch":
            torch.set_num_threads(t)
        start = time.perf_counter()
        call(arg)
        if repeat >= 3:
            times[t].append(time.perf_counter() - start)
assert side == "torch" or "torch" not in sys.modules
print(json.dumps({t: sorted(v) for t, v in times.items()}))
"""


def alone(path: Path, repeats: int, rounds: int = 3) -> list[dict]:
    """Runtime and torch each in a process of its own (the runtime's without torch, as a
    deployed model runs), `rounds` alternating blocks of `repeats // rounds` repeats each.

    Why: in one process torch's OpenMP workers keep spinning for a while after each call
    and take one of the two cores from the runtime's second thread; interleaved in one
    process, Bi-Real-18 at 2 threads measured 10.9-11.1 ms, alone 8.7 ms.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(rounds):
        for side in ("runtime", "torch"):
            out = subprocess.run(
                [sys.executable, "-c", ALONE, side, str(path), str(max(1, repeats // rounds))],
                env=env, capture_output=True, text=True, check=True, cwd=REPO,
            )  # fmt: skip
            for threads, values in json.loads(out.stdout.strip().splitlines()[-1]).items():
                times.setdefault((int(threads), side), []).extend(values)
    return summarize(times)


def summarize(times: dict[tuple[int, str], list[float]],
              threads_list: tuple[int, ...] = THREADS) -> list[dict]:
    """Per thread count: min and median seconds of the runtime and of torch."""
    return [
        {
            "threads": threads,
            **{f"{side}_min": min(times[threads, side]) for side in ("runtime", "torch")},
            **{
                f"{side}_median": float(np.median(times[threads, side]))
                for side in ("runtime", "torch")
            },
        }
        for threads in threads_list
    ]


def speed(path: Path, repeats: int, threads_list: tuple[int, ...] = THREADS) -> list[dict]:
    """Each repeat times, for 1 then 2 threads, the runtime and torch: a load spike from
    other jobs on the shared machine then hits every configuration, not one of them. Who goes
    first alternates by repeat: the first call after the switch to 2 threads also wakes the
    idle second core (in bench_peers.py the engine always called first there lost 15-30%)."""
    net = resnet18().eval()
    x_np = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    x_torch = torch.from_numpy(x_np.copy())
    models = {threads: runtime.load(path, threads=threads) for threads in threads_list}
    times = {(threads, side): [] for threads in threads_list for side in ("runtime", "torch")}
    with torch.no_grad():
        for repeat in range(3 + repeats):  # 3 warm-up rounds: caches, allocator, lazy init
            for threads, model in models.items():
                torch.set_num_threads(threads)
                if repeat % 2:
                    theirs, ours = time_call(net, x_torch), time_call(model.predict, x_np)
                else:
                    ours, theirs = time_call(model.predict, x_np), time_call(net, x_torch)
                if repeat >= 3:
                    times[threads, "runtime"].append(ours)
                    times[threads, "torch"].append(theirs)
    return summarize(times, threads_list)


def avx2_worker(path: Path, repeats: int) -> dict:
    """In a process started with ``isa.avx2_target_env``: what numba compiled for (the target's
    AVX-512 features, the popcount instructions seen in the assembly), torch's capability, and
    the 1-thread comparison of ``speed``."""
    counts = popcount_instruction_counts()
    strategy = default_popcount()
    return {
        "cpu_name": os.environ.get("NUMBA_CPU_NAME", ""),
        "avx512_features": sorted(name for name, on in target_features().items()
                                  if on and name.startswith("avx512")),
        "isa": seen_popcount_isa(counts, strategy),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "rows": speed(path, repeats, threads_list=(1,)),
    }


def avx2_target(path: Path, repeats: int) -> dict:
    """``avx2_worker`` in a child compiled for the AVX2-only target (benchmarks/isa.py)."""
    env = avx2_target_env({**os.environ, "PYTHONPATH": str(REPO)}, default_avx2_cache())
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--avx2-worker", str(path),
         "--repeats", str(repeats)],
        env=env, capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def pack_converted(recipe: str, path: Path) -> None:
    """The product path: ``binarize.convert(resnet18(), recipe)`` then ``binarize.pack``."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    bnn = binarize.convert(resnet18().eval(), recipe=recipe, example_inputs=(x,), teacher=False)
    bnn.schedule.finalize(bnn)
    binarize.pack(bnn.eval(), (x,), path=path)


def breakdown(path: Path, repeats: int, threads: int = 1) -> dict[str, float]:
    """Seconds per step kind at `threads` threads: each step timed alone, min over repeats,
    summed per label (a fused chain is one label), largest first."""
    model = runtime.load(path, threads=threads)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    best: dict[int, float] = {}
    with thread_limits(threads):
        for _ in range(repeats):
            env = {"input": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
            for i, step in enumerate(model.plan):
                start = time.perf_counter()
                step.store(env, step.run([env[name] for name in step.inputs]))
                best[i] = min(best.get(i, np.inf), time.perf_counter() - start)
    totals: dict[str, float] = {}
    for i, step in enumerate(model.plan):
        kind = step.label
        if step.nodes[0].op == "conv2d":
            kind += " {}x{}".format(*step.nodes[0].attrs["kernel"])
        totals[kind] = totals.get(kind, 0.0) + best[i]
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def sizes(path: Path, graph: dict, tensors: dict) -> dict:
    state = resnet18().state_dict()
    float_bytes = sum(t.numel() * t.element_size() for t in state.values())
    float_params = sum(p.numel() for p in resnet18().parameters())
    return {
        "packed": path.stat().st_size,
        "ideal": ideal_bytes(graph, tensors),
        "float_state_dict": float_bytes,
        "float_params": float_params,
    }


def first_predict(path: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", FIRST_PREDICT, str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} logical cores, load average {load} (1/5/15 min) at the "
        f"end of the run; Python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {np.__version__}"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def comparison_row(row: dict) -> str:
    """One table row of ``summarize``'s: threads, min / median of each side, both speed-ups."""
    return (
        f"| {row['threads']} | {ms(row['runtime_min'])} / {ms(row['runtime_median'])} | "
        f"{ms(row['torch_min'])} / {ms(row['torch_median'])} | "
        f"{row['torch_min'] / row['runtime_min']:.2f}x | "
        f"{row['torch_median'] / row['runtime_median']:.2f}x |"
    )


BINARY_LEVER = (
    "the 16 binary convs (over half of the time, the breakdown above) reach 50-70% of the"
    " avx2 ceiling back to back, their popcount loop alone 80-86% (RESULTS_layers.md); the"
    " difference is per-output work (popcount-to-float conversion, the epilogue's pass over"
    " the float residual, border fixes) and the Python around each step, each a few percent"
    " (README)"
)
THREAD_LEVER = (
    "the second-thread probe: below ~1.8x the two cores' vector units are shared with other"
    " work; beyond that the serial parts (the fc GEMV, the input's copies, Python per step)"
)


def speed_targets(speed_rows: list[dict], alone_rows: list[dict], avx2: dict,
                  size: dict, startup: list[dict]) -> list[Target]:
    """The whole-network targets this file checks (issue: performance)."""
    one, two = speed_rows
    one_alone, two_alone = alone_rows
    avx2_row = avx2["rows"][0]
    return [
        Target("Bi-Real-18 vs torch fp32, 1 thread (mins, interleaved)", 6.0,
               one["torch_min"] / one["runtime_min"], lever=BINARY_LEVER),
        Target("Bi-Real-18 vs torch fp32, 2 threads (mins, interleaved)", 5.0,
               two["torch_min"] / two["runtime_min"], lever=BINARY_LEVER + "; " + THREAD_LEVER),
        Target("the same, 1 thread, compiled for the AVX2 target", 4.5,
               avx2_row["torch_min"] / avx2_row["runtime_min"], lever=BINARY_LEVER),
        Target("the runtime's 2-thread speed-up, alone (mins)", 1.7,
               one_alone["runtime_min"] / two_alone["runtime_min"], lever=THREAD_LEVER),
        Target("the runtime's 2-thread median / min, alone", 1.3,
               two_alone["runtime_median"] / two_alone["runtime_min"],
               higher_is_better=False, lever="a quiet machine (the probe near 2.0x)"),
        Target("packed file over the ideal size", 0.05, size["packed"] / size["ideal"] - 1,
               unit="%", higher_is_better=False, lever="the container's JSON graph"),
        Target("first predict with a warm cache (s)", 1.0, startup[-1]["first_predict"],
               unit="", higher_is_better=False, lever="see the start-up table"),
    ]


def avx2_section(avx2: dict, repeats: int) -> list[str]:
    """The AVX2-target run's paragraph and table."""
    lines = [
        "",
        "## The AVX2 target (1 thread)",
        "",
        "The same comparison in a child process whose numba kernels compile for an AVX2-only"
        " x86-64 CPU (`NUMBA_CPU_NAME=znver3`, of the host's features only those a Zen 3 also"
        " has: no AVX-512, AMX, AVX10 or GFNI; a numba cache of its own) and whose torch runs at"
        " AVX2 at most"
        " (`ONEDNN_MAX_CPU_ISA=AVX2`, `ATEN_CPU_CAPABILITY=avx2`): benchmarks/isa.py. What"
        f" most laptops and desktops run. {repeats} repeats, interleaved.",
        "",
    ]
    if not host_has_avx512():
        lines += ["This host has no AVX-512: the AVX2 target is the host's own ISA, so this run"
                  " repeats the 1-thread row above in a process of its own.", ""]
    lines += [
        f"- numba target: {avx2['cpu_name']}, AVX-512 features on: "
        f"{', '.join(avx2['avx512_features']) or 'none'}; popcount seen in the assembly:"
        f" {avx2['isa']}; torch CPU capability: {avx2['torch_capability']}.",
        "",
        "| threads | runtime min / median (ms) | torch min / median (ms) | speed-up (min) |"
        " speed-up (median) |",
        "|---:|---:|---:|---:|---:|",
    ]
    return lines + [comparison_row(row) for row in avx2["rows"]]


def report(speed_rows, size, startup, parts, repeats: int, product: dict,
           alone_rows: list[dict], probe: tuple[float, float], isa_line: str,
           avx2: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}. Machine: {machine()}.",
        "",
        "Command: `NUMBA_CACHE_DIR=.cache/numba .venv/bin/python benchmarks/bench_runtime.py "
        f"--repeats {repeats}` (and `benchmarks/bench_layers.py` for the layer table).",
        "",
        "Machines here are noisy (2 cores, sometimes shared: see the load average): the ratios"
        " come from interleaved runs in one process; 2-thread medians suffer most.",
        "",
        probe_note(*probe),
        "",
        f"Popcount ISA seen in the assembly (a fresh compile of the bconv inner loops for this"
        f" host): {isa_line}.",
        "",
        "## Whole network: Bi-Real-18 in the runtime vs ResNet-18 fp32 in PyTorch",
        "",
        "Batch 1, 224x224. Runtime: benchmarks/bench_bireal18.py (float 7x7 stem + BN + ReLU +"
        " maxpool; 16 binary 3x3 convs, each `quantize -> bconv2d -> affine -> + shortcut ->"
        " RPReLU` fused into one kernel call, which also writes the bits of the next conv's"
        " quantize beside its floats (the side quantize of runtime/graph.py); downsample shortcuts"
        " AvgPool2d(2) -> float 1x1 conv -> BN (Bi-Real/ReActNet style); float fc). PyTorch:"
        " `binarize.models.resnet18()` (torchvision layout), eval, `torch.no_grad()`,"
        f" `torch.set_num_threads`. {repeats} repeats after 3 warm-up rounds; each repeat runs"
        " runtime and torch at 1 thread, then both at 2 threads, who goes first alternating"
        " by repeat (the first call after the switch to 2 threads also wakes the idle second"
        " core).",
        "",
        "| threads | runtime min (ms) | runtime median (ms) | torch min (ms) | torch median (ms)"
        " | speed-up (min) | speed-up (median) | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row, target in zip(speed_rows, ("6x", "5x")):
        lines.append(
            f"| {row['threads']} | {ms(row['runtime_min'])} | {ms(row['runtime_median'])} | "
            f"{ms(row['torch_min'])} | {ms(row['torch_median'])} | "
            f"{row['torch_min'] / row['runtime_min']:.2f}x | "
            f"{row['torch_median'] / row['runtime_median']:.2f}x | {target} |"
        )
    lines += [
        "",
        "The same comparison through the product path: `binarize.convert(resnet18(), recipe)`"
        " then `binarize.pack` (torchvision's strided 1x1 downsample kept float, the recipe's"
        " own shortcuts and activations; untrained weights, which do not change the speed):",
        "",
        "| recipe | threads | runtime min / median (ms) | torch min / median (ms) |"
        " speed-up (min) | speed-up (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {recipe} " + comparison_row(row)
              for recipe, rows in product.items() for row in rows]
    lines += [
        "",
        "Each alone in a process of its own (the runtime's without torch, as a deployed model"
        " runs; 3 alternating blocks, same repeats): in one process torch's OpenMP workers keep"
        " spinning after each call and take a core from the runtime's second thread.",
        "",
        "| threads | runtime min / median (ms) | torch min / median (ms) | speed-up (min) |"
        " speed-up (median) |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [comparison_row(row) for row in alone_rows]
    one_alone, two_alone = (row["runtime_min"] for row in alone_rows)
    lines += ["", f"The runtime's second thread, alone: {one_alone / two_alone:.2f}x (min)."]
    lines += avx2_section(avx2, repeats)
    one, two = parts
    total, total2 = sum(one.values()), sum(two.values())
    lines += [
        "",
        "Where the runtime's time goes (each step timed alone, min over the repeats, summed per"
        f" kind; total {ms(total)} ms at 1 thread, {ms(total2)} ms at 2, a {total / total2:.2f}x"
        " speed-up; the last column is what the second thread buys per kind):",
        "",
        "| step kind | ms, 1 thread | share | ms, 2 threads | 2-thread speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {kind} | {ms(t)} | {t / total * 100:.0f}% | {ms(two[kind])} | {t / two[kind]:.2f}x |"
        for kind, t in one.items()
    ]
    lines += [
        "",
        "The 16 binary convs with their fused epilogues take the largest share; the float stem"
        " (7x7 conv, 118 M MACs: the direct FMA micro-kernel of runtime/kernels/conv_direct.py,"
        " 6 pixels x 16 channels per call from the padded input, no im2col, epilogue per"
        " output row) comes next; the 1x1 downsample convs run the same kernel in runs of"
        " pixels, split into channel shares when the output has few rows. The 2-thread"
        " medians are far above the minima: a parallel step waits for a descheduled thread"
        " whenever anything else runs on the two cores.",
    ]
    over = size["packed"] / size["ideal"] - 1
    lines += [
        "",
        "## Size",
        "",
        "| what | bytes | MiB | vs packed |",
        "|---|---:|---:|---:|",
        f"| packed file (safetensors + graph JSON) | {size['packed']:,} | "
        f"{size['packed'] / 2**20:.2f} | 1.00x |",
        f"| ideal: 1 bit per binary weight + 32 bits per float parameter | {size['ideal']:,} | "
        f"{size['ideal'] / 2**20:.2f} | {size['ideal'] / size['packed']:.3f}x |",
        f"| ResNet-18 fp32 state_dict ({size['float_params']:,} parameters + BN buffers) | "
        f"{size['float_state_dict']:,} | {size['float_state_dict'] / 2**20:.2f} | "
        f"{size['float_state_dict'] / size['packed']:.2f}x |",
        "",
        f"The packed file is {over * 100:.2f}% over the ideal (target: within 5%); it is "
        f"{size['float_state_dict'] / size['packed']:.1f}x smaller than the float weights."
        " Most of what remains is float: the fc layer (2 MB) and the stem.",
        "",
        "## Start-up: first predict in a fresh process with a warm numba cache",
        "",
        "`import runtime`, `runtime.load(path)` and the first two `predict` calls in a new"
        " Python process (subprocess, NUMBA_CACHE_DIR inherited); run twice, the second run is"
        " the warm-cache one. Target: first predict under 1 s.",
        "",
        "| run | import (s) | load (s) | first predict (s) | second predict (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, run in zip(("first (may compile)", "second (warm cache)"), startup):
        lines.append(
            f"| {label} | {run['import']:.2f} | {run['load']:.2f} | "
            f"{run['first_predict']:.2f} | {run['second_predict']:.3f} |"
        )
    lines += ["", *targets_table(speed_targets(speed_rows, alone_rows, avx2, size, startup))]
    layers = HERE / "RESULTS_layers.md"
    lines += ["", "## Layers (from benchmarks/bench_layers.py)", ""]
    if layers.exists():
        body = layers.read_text().strip().splitlines()
        lines += [("#" + line) if line.startswith("#") else line for line in body]
    else:
        lines.append(
            "benchmarks/RESULTS_layers.md is not there yet: run "
            "`benchmarks/bench_layers.py`, then this script again."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--avx2-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.avx2_worker:  # the child of avx2_target: print its JSON, write nothing
        print(json.dumps(avx2_worker(args.avx2_worker, args.repeats)))
        return
    probe_start = second_thread_gain()
    isa_line = seen_popcount_isa(popcount_instruction_counts())
    graph, tensors = bireal18()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bireal18.bnn"
        write_model(path, graph, tensors)
        startup = first_predict(path)
        print("start-up:", startup)
        size = sizes(path, graph, tensors)
        print("size:", size)
        speed_rows = speed(path, args.repeats)
        print("speed:", speed_rows)
        alone_rows = alone(path, args.repeats)
        print("alone:", alone_rows)
        avx2 = avx2_target(path, args.repeats)
        print("avx2 target:", avx2)
        parts = breakdown(path, args.repeats), breakdown(path, args.repeats, threads=2)
        print("breakdown:", parts)
        product = {}
        for recipe in ("bireal", "reactnet"):
            converted = Path(folder) / f"{recipe}18.bnn"
            pack_converted(recipe, converted)
            product[recipe] = speed(converted, args.repeats)
            print(recipe, product[recipe])
    probe = (probe_start, second_thread_gain())
    print("second-thread probe:", probe)
    write_result(args.output, report(speed_rows, size, startup, parts, args.repeats, product,
                                     alone_rows, probe, isa_line, avx2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
