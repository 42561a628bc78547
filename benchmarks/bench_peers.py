"""Peers side by side: this runtime's Bi-Real-18 against Larq Compute Engine and onnxruntime.

    make bench-peers                  # or ARGS=--quick for 5 repeats
    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python benchmarks/bench_peers.py \\
        --peers-python .venv-peers/bin/python [--repeats 30] [--quick]

Batch 1, 224x224, 1 and 2 threads, all in one run:

- ours: benchmarks/bench_bireal18.py's Bi-Real-18 (random weights), packed, run by
  ``runtime.load(path, threads=n).predict`` in a worker process of its own that never
  imports torch (benchmarks/ours_worker.py, this venv), as a deployed model runs and as the
  peers run; and, for comparison, the same model in this process beside torch;
- LCE: the same topology built in Larq (benchmarks/peers_worker.py), converted by
  ``larq_compute_engine.convert_keras_model``, run by LCE's interpreter (indirect BGEMM kernel,
  ``num_threads=n``), in a worker process in the peers' venv;
- onnxruntime: ``binarize.models.resnet18()`` fp32 exported to ONNX here, run in the worker
  (``intra_op_num_threads=n``);
- torch: the same ResNet-18 fp32 in this process (eval, ``no_grad``, ``torch.set_num_threads``),
  the common baseline of benchmarks/RESULTS.md.

The two venvs cannot share a process (TensorFlow 2.16 needs numpy < 2, torch 2.13 and numba
here use numpy 2), so the workers load their models once and time one call per request; each
repeat runs ours (worker), ours (here), LCE, onnxruntime and torch at 1 thread, then all five
at 2 threads, with a short pause between calls so that one engine's spinning worker threads
are asleep before the next one starts, the order rotating by one engine each repeat, and each
timed call right after an untimed one of the same engine (``--warm-calls``), so that it finds
its core awake after the pause. Load from other processes then hits every engine alike. Min
and median over the repeats after the warm-up rounds. Writes benchmarks/RESULTS_peers.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from bench_bireal18 import bireal18  # noqa: E402
from core_probe import probe_note, second_thread_gain  # noqa: E402
from isa import (  # noqa: E402
    cpuinfo_mhz,
    describe_instructions,
    popcount_instruction_counts,
    seen_popcount_isa,
)
from result_file import write_result  # noqa: E402
from targets import Target, targets_table  # noqa: E402
from timing import time_call  # noqa: E402

import runtime  # noqa: E402
from binarize.models import resnet18  # noqa: E402
from runtime.format import write_model  # noqa: E402

ENGINES = ("ours", "ours_driver", "lce", "ort", "torch")
LABELS = {
    "ours": "ours: Bi-Real-18, runtime (own process)",
    "ours_driver": "ours beside torch (driver process)",
    "lce": "LCE: Bi-Real-18",
    "ort": "onnxruntime: ResNet-18 fp32",
    "torch": "torch: ResNet-18 fp32",
}
PEERS = ("lce", "ort")


class Worker:
    """A worker script (peers_worker.py in the peers' venv, ours_worker.py in this one),
    spoken to in JSON lines."""

    def __init__(self, python: Path, script: str, log: Path) -> None:
        self.log = log
        self.stderr = log.open("w")
        self.process = subprocess.Popen(
            [str(python), str(HERE / script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            tail = self.log.read_text().strip().splitlines()[-15:]
            raise RuntimeError(f"{self.log.stem} exited:\n" + "\n".join(tail))
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:  # "quit" has no answer: the worker leaves its loop
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.stderr.close()


def export_onnx(net: torch.nn.Module, path: Path) -> str:
    """``binarize.models.resnet18()`` to ONNX with torch's TorchScript exporter; returns how.

    torch 2.13's exporters both import the ``onnx`` package, which this venv does not have
    (nor onnxscript, which the default dynamo exporter needs). The TorchScript exporter builds
    the ModelProto bytes in C++ and uses ``onnx`` only to insert onnxscript custom functions
    into them (``_add_onnxscript_fn``); ResNet-18 has none, so without ``onnx`` that step is
    replaced by the identity and the bytes are written as they are. The worker's onnxruntime
    loads them and its logits are compared with torch's."""
    example = torch.zeros(1, 3, 224, 224)
    kwargs = dict(dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (example,), str(path), **kwargs)
            return "torch.onnx.export(dynamo=False, opset 17)"
        except Exception as error:  # torch.onnx.OnnxExporterError: "Module onnx is not installed!"
            if "onnx is not installed" not in str(error):
                raise
        from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

        onnx_proto_utils._add_onnxscript_fn = lambda model_bytes, custom_opsets: model_bytes
        torch.onnx.export(net, (example,), str(path), **kwargs)
    return (
        "torch.onnx.export(dynamo=False, opset 17); the main venv has no `onnx`, so torch's "
        "`_add_onnxscript_fn` step (which only adds onnxscript functions, none here) was "
        "skipped"
    )


def measure(
    args, net: torch.nn.Module, worker: Worker | None, ready: set[str], folder: Path
) -> dict:
    """times[(threads, engine)] = seconds per repeat; interleaved as the module docstring says.
    ``net`` is the torch ResNet-18 that was exported to the worker's ONNX file."""
    graph, tensors = bireal18()
    packed = folder / "bireal18.bnn"
    write_model(packed, graph, tensors)
    ours = {n: runtime.load(packed, threads=n) for n in args.threads}
    alone = Worker(Path(sys.executable), "ours_worker.py", folder / "ours_worker.log")
    try:
        alone.ask(cmd="load", path=str(packed), threads=args.threads)
        return _measure(args, net, worker, ready, ours, alone)
    finally:
        alone.close()


def _measure(
    args,
    net: torch.nn.Module,
    worker: Worker | None,
    ready: set[str],
    ours: dict[int, runtime.Model],
    alone: Worker,
) -> dict:
    """The interleaved repeats of ``measure``: ``ours`` the models in this process, ``alone``
    the worker with the same packed file."""
    x_nhwc = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    x = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))  # the worker's input, NCHW
    x_torch = torch.from_numpy(x.copy())
    times: dict[tuple[int, str], list[float]] = {(n, e): [] for n in args.threads for e in ENGINES}
    gap, warm = args.gap_ms / 1000, args.warm_calls
    with torch.no_grad():
        for repeat in range(args.warmup + args.repeats):
            for n in args.threads:
                torch.set_num_threads(n)
                # rotated each repeat: the first call after the switch of thread count wakes
                # the idle second core (measured: ours in its worker, always first, took
                # 12.6-14.5 ms at 2 threads against 9.0-11.1 for the same model second)
                for engine in ENGINES[repeat % len(ENGINES):] + ENGINES[:repeat % len(ENGINES)]:
                    if engine == "ours":
                        seconds = alone.ask(cmd="time", threads=n, warm=warm)["seconds"]
                    elif engine == "ours_driver":
                        seconds = time_call(ours[n].predict, x, warm=warm)
                    elif engine == "torch":
                        seconds = time_call(net, x_torch, warm=warm)
                    elif engine in ready and worker is not None:
                        seconds = worker.ask(cmd="time", engine=engine, threads=n,
                                             warm=warm)["seconds"]
                    else:
                        continue
                    if repeat >= args.warmup:
                        times[n, engine].append(seconds)
                    time.sleep(gap)
            print(f"repeat {repeat + 1}/{args.warmup + args.repeats}", flush=True)
        reference = net(x_torch).numpy().ravel()
    theirs = np.asarray(alone.ask(cmd="logits")["logits"], np.float32)
    if not np.array_equal(theirs, ours[args.threads[0]].predict(x).ravel()):
        raise RuntimeError("ours_worker.py's logits differ from the driver's for the same file")
    check = ""
    if "ort" in ready and worker is not None:
        theirs = np.asarray(worker.ask(cmd="ort_logits")["logits"], np.float32)
        check = f"{float(np.abs(theirs - reference).max()):.2e}"
    return {"times": times, "ort_vs_torch": check}


def cell(values: list[float]) -> str:
    if not values:
        return "skipped (see notes)"
    return f"{min(values) * 1e3:.1f} / {statistics.median(values) * 1e3:.1f}"


def ratio(slow: list[float], fast: list[float]) -> str:
    if not slow or not fast:
        return "-"
    by_min, by_median = min(slow) / min(fast), statistics.median(slow) / statistics.median(fast)
    return f"{by_min:.2f}x / {by_median:.2f}x"


def report(args, result: dict, info: dict, meta: dict) -> str:
    times = result["times"]
    errors = info.get("errors", {})
    versions = info.get("versions", {})
    command = "make bench-peers" + (" ARGS=--quick" if args.quick else "")
    lines = [
        "# Peers side by side: Bi-Real-18 in this runtime vs Larq Compute Engine, and ResNet-18 "
        "fp32 in onnxruntime and torch",
        "",
        f"Date: {meta['date']}. Machine: {meta['cpu']}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs. Popcount in the compiled bconv kernel: {meta['popcount']}.",
        f"Load average (1 min): {meta['load_start']:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end. {probe_note(*meta['probe'])}",
        "",
        f"Command: `{command}` (= `.venv/bin/python benchmarks/bench_peers.py --peers-python "
        f"{args.peers_python} --repeats {args.repeats} --warmup {args.warmup} --warm-calls "
        f"{args.warm_calls}`)."
        + (" **Quick check: too few repeats for final numbers.**" if args.quick else ""),
        "",
        f"Versions: torch {torch.__version__}, numpy {np.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "",
        f"Batch 1, 224x224. ms per inference, min / median over {args.repeats} repeats after "
        f"{args.warmup} warm-up rounds; each repeat runs the five columns one after the other "
        f"({args.gap_ms:g} ms pause between engines; the order rotates by one column each "
        "repeat, so that no engine is always the first after the switch of thread count) at "
        f"1 thread, then at 2 threads; each timed call comes right after {args.warm_calls} "
        "untimed call(s) of the same engine, so that it finds its core awake (the first call "
        "after an idle pause ran 10-25% slower here for ours, not measurably for LCE). "
        "Speed-ups "
        "are the engine's time over ours (min / median).",
        "",
        "| threads | " + " | ".join(f"{LABELS[e]} (ms)" for e in ENGINES)
        + " | ours vs LCE | ours vs onnxruntime | ours vs torch | ours beside torch vs LCE |",
        "|---:|" + "---:|" * (len(ENGINES) + 4),
    ]
    for n in args.threads:
        ours = times[n, "ours"]
        lines.append(
            f"| {n} | " + " | ".join(cell(times[n, e]) for e in ENGINES) + " | "
            + " | ".join(ratio(times[n, e], ours) for e in ("lce", "ort", "torch")) + " | "
            + ratio(times[n, "lce"], times[n, "ours_driver"]) + " |"
        )
    ops = info.get("lce_ops")
    lines += ["", "Notes:", ""]
    if ops:
        lines.append(
            "- LCE: `convert_keras_model` (target arm, the default; "
            f"{info['lce_convert_s']:.0f} s), {info['lce_bytes'] / 2**20:.2f} MiB flatbuffer, "
            "ops " + ", ".join(f"{k} x{v}" for k, v in ops.items()) + ". Interpreter "
            "`Interpreter(flatbuffer, num_threads=n, use_reference_bconv=False, "
            "use_indirect_bgemm=True, use_xnnpack=False)`: the optimised indirect-BGEMM "
            "LceBconv2d kernel (the fastest of LCE's three bconv kernels here: the im2col "
            "BGEMM and the reference one were slower), TFLite's builtin float kernels (the "
            "XNNPACK delegate was no faster at 1 thread, slower at 2). LCE's Interpreter "
            "docstring says LCE is optimised for ARMv8 and not for x86: its hand-written "
            "indirect-BGEMM kernels are aarch64 assembly, on x86 it runs the portable C++ "
            "4x2 kernel (larq_compute_engine/core/indirect_bgemm/ in its sources). So this "
            "is LCE off its home ground."
        )
    lines += [
        "- The Larq model (benchmarks/peers_worker.py) has the layout of "
        "benchmarks/bench_bireal18.py: float 7x7/2 stem + BN + ReLU + maxpool, 16 binary 3x3 "
        "convs `QuantConv2D(ste_sign, ste_sign, weight_clip, padding=same, pad_values=1.0)` "
        "+ BN + real-valued shortcut, downsample AvgPool2D(2) -> float 1x1 conv -> BN, global "
        "average pool, dense 1000. pad_values=1.0: with it LCE's kernels need no extra pass; "
        "with zero-padding (pad_values=0) they run a zero-padding correction over the float "
        "output after the BGEMM (ours zero-pads: padded taps contribute 0). Ours ends each "
        "block in an RPReLU, the Larq model in nothing (Bi-Real Net): LCE does slightly less "
        "work.",
        "- Both binary models have random weights (ours from numpy, Larq's from Keras "
        "initialisers with BN at its defaults), which do not change the speed.",
        f"- onnxruntime: ResNet-18 exported by {meta['export']}; `intra_op_num_threads=n`, "
        "`inter_op_num_threads=1`, sequential, all graph optimisations, CPUExecutionProvider."
        + (f" Largest |logit difference| to torch on the same input: {result['ort_vs_torch']}."
           if result["ort_vs_torch"] else ""),
        "- torch: `binarize.models.resnet18()` fp32, eval, `torch.no_grad()`, "
        "`torch.set_num_threads(n)`, in the driver process (as in benchmarks/RESULTS.md).",
        "- Ours runs in a worker process of its own that never imports torch "
        "(benchmarks/ours_worker.py: a deployed model's process), LCE and onnxruntime in "
        "theirs (benchmarks/peers_worker.py), each timed inside its worker around the engine "
        "call, so the pipe is not counted; the ratios use it. The column *ours beside torch* "
        "is the same packed model in the driver process, where torch's thread pool and "
        "allocator live too: shown for comparison (the benchmarks before this one timed ours "
        "there).",
    ]
    for engine in PEERS:
        if engine in errors:
            text = errors[engine].strip().splitlines()
            lines.append(f"- **{LABELS[engine]} skipped**: " + " / ".join(text[-3:]))
    if times.get((1, "lce")) and times.get((1, "ours")):
        lines += ["", *targets_table([Target(
            "ours vs LCE's fastest kernel, 1 thread (mins)", 3.0,
            min(times[1, "lce"]) / min(times[1, "ours"]),
            lever="ours' own time: see benchmarks/RESULTS.md's targets (the binary convs' "
                  "per-output work and the Python between steps)")])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 repeats, 2 warm-up rounds")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--warm-calls", type=int, default=1,
                        help="untimed calls of the engine right before each timed one (0: time "
                             "the first call after the pause, on a core that idled)")
    parser.add_argument("--peers-python", type=Path, default=REPO / ".venv-peers/bin/python")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS_peers.md")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup = 5, 2
    args.threads = [int(t) for t in args.threads.split(",")]
    meta = {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "load_start": os.getloadavg()[0],
        "cpu": cpuinfo_mhz(),
    }
    probe_start = second_thread_gain()
    torch.manual_seed(0)
    net = resnet18().eval()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        onnx_path: Path | None = folder / "resnet18.onnx"
        try:
            meta["export"] = export_onnx(net, onnx_path)
        except Exception as error:
            meta["export"] = f"nothing: the export failed ({type(error).__name__}: {error})"
            onnx_path = None
        print("ONNX export:", meta["export"], flush=True)
        worker: Worker | None = None
        info: dict[str, Any] = {"errors": {}}
        if not args.peers_python.exists():
            reason = f"{args.peers_python} not found (run `make bench-peers` to build it)"
            info["errors"] = {engine: reason for engine in PEERS}
        else:
            worker = Worker(args.peers_python, "peers_worker.py", folder / "peers_worker.log")
            try:
                info = worker.ask(
                    cmd="load", threads=args.threads, onnx=str(onnx_path) if onnx_path else None
                )
            except RuntimeError as error:
                info["errors"] = {engine: str(error) for engine in PEERS}
        for engine, text in info["errors"].items():
            print(f"{engine} skipped: {text}", file=sys.stderr, flush=True)
        ready = {engine for engine in PEERS if engine not in info["errors"]}
        print("peers loaded:", sorted(ready), info.get("lce_ops", ""), flush=True)
        try:
            result = measure(args, net, worker, ready, folder)
        finally:
            if worker is not None:
                worker.close()
    # after the runtime ran: bench_layers reads the signatures the bconv kernel compiled for
    counts = popcount_instruction_counts()
    meta["popcount"] = f"{seen_popcount_isa(counts)} ({describe_instructions(counts)})"
    meta["probe"] = (probe_start, second_thread_gain())
    text = report(args, result, info, meta)
    write_result(args.output, text)
    print(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
