"""What the kill-loop tests run in a child process (forked from a preloaded fork server).

Each function reports on `conn` (a multiprocessing Connection) when it is about to do the
work that gets killed, then does it. `die_at` is the test-only hook that kills the process
inside an atomic write, after the temp file is complete and before it is renamed: the child
replaces `os.replace` with a version that SIGKILLs itself on its `die_at`-th call. The library
has no such hook; only this child process is patched.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from tqdm import tqdm

import binarize
from binarize.train import finetune

from .helpers import make_bnn, tiny_float

EPOCHS = 16


def single_threaded() -> None:
    """One torch thread, and tqdm's lock a thread lock instead of its default process-shared
    semaphore (which a killed child would leak)."""
    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())


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


def train(conn: Connection, folder: str, die_at: int | None = None) -> None:
    """Fine-tune a ~750-parameter binary CNN on random tensors, checkpointing every epoch in
    `folder` (resuming from it), then save the final weights and losses to folder/final.pt."""
    single_threaded()
    if die_at is not None:
        die_on_replace(die_at)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(32, 1, 8, 8, generator=generator)
    y = torch.randint(0, 4, (32,), generator=generator)
    bnn = make_bnn(seed=0)
    conn.send(("ready", os.getpid()))
    started = time.perf_counter()
    history = finetune(
        bnn, (x, y), (x[:16], y[:16]), epochs=EPOCHS, batch_size=16, lr=1e-2,
        checkpoint_dir=folder, progress=False,
    )
    seconds = time.perf_counter() - started
    result = {"model": bnn.state_dict(), "train_loss": history["train_loss"],
              "val_loss": history["val_loss"]}
    torch.save(result, Path(folder) / "final.pt")
    conn.send(("done", seconds))


def pack_forever(conn: Connection, path: str, die_at: int | None = None) -> None:
    """Pack two different converted models to `path`, alternately, until killed.

    Sends ("ready", pid, bytes_a, bytes_b) after the first write, so `path` always holds a
    complete file of one of the two from then on.
    """
    single_threaded()
    if die_at is not None:
        die_on_replace(die_at)
    x = torch.randn(2, 1, 8, 8)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(binarize.convert(tiny_float(), recipe="xnor", example_inputs=(x,)))
    blobs = [binarize.pack(model, (x,), path=path) for model in models]
    conn.send(("ready", os.getpid(), *blobs))
    while True:
        for model in models:
            binarize.pack(model, (x,), path=path)

