"""This runtime in a process of its own, for benchmarks/bench_peers.py: as a model is deployed.

The driver (bench_peers.py) imports torch to run its ResNet-18 baseline; a runtime timed in
that process shares it with torch's thread pool and allocator, and no deployed model does
(the runtime never imports torch). LCE and onnxruntime already run in a worker of their own
(peers_worker.py), so this worker gives ours the same footing: it imports numpy and the
runtime only (checked: it refuses to run with torch loaded) and speaks the same JSON lines:

- ``{"cmd": "load", "path": packed file, "threads": [1, 2]}``: one loaded model per thread
  count, each warmed up by three predicts; answers ``{"threads": [...]}``.
- ``{"cmd": "time", "threads": n, "warm": k}``: one batch-1 predict of the fixed input
  (seed 0, the driver's), timed here around the call alone (no pipe or JSON cost), after k
  untimed ones right before it: ``{"seconds": t}``.
- ``{"cmd": "logits"}``: the first model's logits of that input (the driver checks that they
  are its own, bit for bit).
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import time_call
from worker_loop import serve

import runtime


def fixed_input() -> np.ndarray:
    """The driver's input: float32 [1, 3, 224, 224] NCHW from seed 0, drawn NHWC."""
    x_nhwc = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    return np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))


def main() -> None:
    models: dict[int, runtime.Model] = {}
    x = fixed_input()

    def load(request: dict) -> dict:
        for n in request["threads"]:
            models[n] = runtime.load(request["path"], threads=n)
            for _ in range(3):
                models[n].predict(x)
        return {"threads": sorted(models)}

    def timed(request: dict) -> dict:
        predict = models[request["threads"]].predict
        return {"seconds": time_call(predict, x, warm=request.get("warm", 0))}

    def no_torch() -> None:
        if "torch" in sys.modules:
            raise RuntimeError("torch was imported: this worker must run without it")

    serve({
        "load": load,
        "time": timed,
        "logits": lambda r: {"logits": next(iter(models.values())).predict(x).ravel().tolist()},
    }, check=no_torch)


if __name__ == "__main__":
    main()
