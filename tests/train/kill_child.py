"""What the kill-loop tests run in child processes: a zygote that forks one child per life.

`python -m tests.train.kill_child` (from the repository root) imports torch and binarize
once, warms them up (a first finetune, resume and pack load torch's lazy modules), then reads
one JSON job per line on stdin, forks a child for it and waits for the child. Its stdout
carries JSON lines only: from the child, {"event": "ready", "pid": ...} when the work that gets
killed starts and {"event": "done", ...} at the end; from the zygote, {"event": "exit",
"pid": ..., "code": ...} once the child is reaped (code -9: SIGKILLed). So the test kills a
child with os.kill(pid, SIGKILL) and a life costs a fork, not an interpreter start, and when
"exit" arrives the pid is gone, as a later write's stale-temp check needs.

`die_at` is the test-only hook that kills a child inside an atomic write, after the temp
file is complete and before it is renamed: the child replaces `os.replace` with a version that
SIGKILLs itself on its `die_at`-th call. The library has no such hook.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import binarize
from binarize.train import finetune

from .helpers import make_bnn, tiny_float

EPOCHS = 24
Report = Callable[..., None]


def die_on_replace(call: int) -> None:
    """SIGKILL this process on its `call`-th os.replace, after the temp file was written."""
    real_replace = os.replace
    calls = 0

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        nonlocal calls
        calls += 1
        if calls == call:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace


def train(report: Report, folder: str, die_at: int | None = None, epochs: int = EPOCHS) -> None:
    """Fine-tune a 740-parameter binary CNN on random tensors, checkpointing every epoch in
    `folder` (resuming from it), then save the final weights and losses to folder/final.pt."""
    if die_at is not None:
        die_on_replace(die_at)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(32, 1, 8, 8, generator=generator)
    y = torch.randint(0, 4, (32,), generator=generator)
    bnn = make_bnn(seed=0)
    report("ready")
    started = time.perf_counter()
    history = finetune(
        bnn, (x, y), (x[:16], y[:16]), epochs=epochs, batch_size=16, lr=1e-2,
        checkpoint_dir=folder, progress=False,
    )
    seconds = time.perf_counter() - started
    result = {"model": bnn.state_dict(), "train_loss": history["train_loss"],
              "val_loss": history["val_loss"]}
    torch.save(result, Path(folder) / "final.pt")
    report("done", seconds=seconds)


def pack_forever(report: Report, path: str, die_at: int | None = None) -> None:
    """Pack two different converted models to `path`, alternately, until killed.

    Reports the sha256 of both files' bytes with "ready", after the first write of each, so
    from then on `path` always holds a complete file of one of the two.
    """
    if die_at is not None:
        die_on_replace(die_at)
    x = torch.randn(2, 1, 8, 8)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(binarize.convert(tiny_float(), recipe="xnor", example_inputs=(x,)))
    digests = [hashlib.sha256(binarize.pack(m, (x,), path=path)).hexdigest() for m in models]
    report("ready", digests=digests)
    while True:
        for model in models:
            binarize.pack(model, (x,), path=path)


JOBS: dict[str, Callable[..., None]] = {"train": train, "pack_forever": pack_forever}


def warm_up() -> None:
    """Run each job's code paths once (training, a resume, a pack) in a throwaway folder."""
    with tempfile.TemporaryDirectory() as folder:
        quiet: Report = lambda event, **fields: None  # noqa: E731
        train(quiet, folder, epochs=1)
        (Path(folder) / "final.pt").unlink()
        train(quiet, folder, epochs=1)
        x = torch.randn(2, 1, 8, 8)
        binarize.pack(binarize.convert(tiny_float(), recipe="xnor", example_inputs=(x,)), (x,),
                      path=Path(folder) / "model.bnn")


def serve() -> None:
    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())  # not tqdm's process-shared semaphore: no fork hazard
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints cannot corrupt channel

    def report(event: str, **fields: Any) -> None:
        channel.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")

    warm_up()
    report("serving")
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                JOBS[job["job"]](report, *job["args"])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                channel.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        report("exit", child=pid, code=os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    serve()
