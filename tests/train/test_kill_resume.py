"""Killed writers: SIGKILL at random moments and inside an atomic write, then resume.

Fine-tuning killed and resumed any number of times ends with exactly the weights of an
uninterrupted run; `pack(path=...)` killed leaves the old file or the new one, never a torn
one; and the temp files that killed writers leave behind are removed by the next write to the
same path, while the temp files of live writers are kept.

The children are forked from a fork server that has imported torch and binarize once, so a
killed-and-restarted life costs milliseconds instead of an interpreter start.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import pytest
import torch

import binarize
import runtime
from binarize.checkpoint import load_checkpoint, save_checkpoint
from runtime.atomic import temp_owner

from . import kill_child
from .helpers import tiny_float

KILLED = -signal.SIGKILL


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def temps_of(path: Path) -> dict[str, int]:
    """The temp files of `path` in its folder, by name, with their writer's pid."""
    owners = {p.name: temp_owner(path, p.name) for p in path.parent.iterdir()}
    return {name: pid for name, pid in owners.items() if pid is not None}


def write_checkpoint(path: Path) -> None:
    save_checkpoint({"weights": torch.arange(4.0)}, path)


def write_packed(path: Path) -> None:
    x = torch.randn(2, 1, 8, 8)
    binarize.pack(binarize.convert(tiny_float(), recipe="xnor", example_inputs=(x,)), (x,),
                  path=path)


@pytest.mark.parametrize(
    ("name", "write"), [("last.pt", write_checkpoint), ("model.bnn", write_packed)]
)
def test_a_write_removes_dead_writers_temps_and_keeps_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, write: Callable[[Path], None]
) -> None:
    target = tmp_path / name
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = tmp_path / f".{name}.{dead_pid()}-a1b2c3.tmp"
        mine = tmp_path / f".{name}.{os.getpid()}-d4e5f6.tmp"  # e.g. another thread's write
        live = tmp_path / f".{name}.{sleeper.pid}-g7h8i9.tmp"
        others = tmp_path / f".other.{name}.{dead_pid()}-j0k1l2.tmp"  # another path's temp
        for temp in (stale, mine, live, others):
            temp.write_bytes(b"half a file")
        renamed: list[str] = []
        real_replace = os.replace

        def spy(src: str, dst: str) -> None:
            renamed.append(Path(src).name)
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", spy)
        write(target)
        assert not stale.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [name, mine.name, live.name, others.name]
        )
        assert temp_owner(target, renamed[0]) == os.getpid()  # the writer's own temp
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.fixture(scope="module")
def forkserver() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    # by name from the default sys.path (3.11's fork server does not get the tests' path)
    context.set_forkserver_preload(["torch", "binarize", "tqdm"])
    return context


def life(
    context: ForkServerContext,
    target: Callable[..., None],
    *args: Any,
    kill_after: float | None = None,
) -> tuple[int | None, list[tuple[Any, ...]]]:
    """Run `target(conn, *args)` in a child; SIGKILL it `kill_after` seconds after it says
    it is ready (None: let it end). Returns its exit code and the messages it sent."""
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(send, *args))
    process.start()
    send.close()
    messages: list[tuple[Any, ...]] = []
    try:
        if receive.poll(120):  # ready, or the end of the pipe if it failed to start
            messages += drain(receive)
        if kill_after is not None and not receive.poll(kill_after):
            process.kill()
        process.join(120)
        messages += drain(receive)
    finally:
        receive.close()
        if process.exitcode is None:
            process.kill()
            process.join()
    return process.exitcode, messages


def drain(receive: Connection) -> list[tuple[Any, ...]]:
    """The messages waiting in `receive` now (all of them once the sender is gone)."""
    messages = []
    with contextlib.suppress(EOFError):
        while receive.poll():
            messages.append(receive.recv())
    return messages


def assert_same_result(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


@pytest.mark.slow
def test_training_killed_at_random_and_resumed_ends_with_the_uninterrupted_weights(
    forkserver: ForkServerContext, tmp_path: Path
) -> None:
    code, messages = life(forkserver, kill_child.train, str(tmp_path / "reference"))
    assert code == 0
    seconds = messages[-1][1]
    reference = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    assert len(reference["train_loss"]) == kill_child.EPOCHS

    folder = tmp_path / "killed"
    checkpoint = folder / "last.pt"
    # 1. killed inside the checkpoint write of epoch 2: after its temp file is complete,
    #    before the rename. last.pt stays epoch 1's; the dead writer's temp stays behind.
    code, messages = life(forkserver, kill_child.train, str(folder), 2)
    assert code == KILLED
    assert load_checkpoint(checkpoint)["epoch"] == 1
    assert list(temps_of(checkpoint).values()) == [messages[0][1]]
    # 2. killed at seeded random moments: in start-up, resume, training or a write. Each
    #    life runs under 1/12 of the whole run, so training cannot end before the last kill.
    draws, kills = random.Random(20240613), 0
    for _ in range(5):
        epoch = load_checkpoint(checkpoint)["epoch"]
        before = set(temps_of(checkpoint).values())
        code, messages = life(
            forkserver, kill_child.train, str(folder), kill_after=draws.uniform(0, seconds / 12)
        )
        kills += code == KILLED
        assert code in (KILLED, 0)
        pid = messages[0][1]
        wrote = load_checkpoint(checkpoint)["epoch"] > epoch  # its first write removed them
        assert set(temps_of(checkpoint).values()) <= ({pid} if wrote else before | {pid})
    assert kills == 5
    assert load_checkpoint(checkpoint)["epoch"] < kill_child.EPOCHS
    # 3. the last life resumes and finishes.
    code, _ = life(forkserver, kill_child.train, str(folder))
    assert code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["final.pt", "last.pt"]
    assert_same_result(torch.load(folder / "final.pt", weights_only=True), reference)


@pytest.mark.slow
def test_pack_killed_mid_write_leaves_the_old_file_or_the_new_one(
    forkserver: ForkServerContext, tmp_path: Path
) -> None:
    path = tmp_path / "model.bnn"
    # killed on its third write (the first after the two it makes before saying ready),
    # between the complete temp file and the rename: the file is still the second model.
    code, messages = life(forkserver, kill_child.pack_forever, str(path), 3)
    assert code == KILLED
    _, pid, first, second = messages[0]
    assert path.read_bytes() == second
    [(temp, owner)] = temps_of(path).items()
    assert owner == pid and (tmp_path / temp).read_bytes() == first
    draws = random.Random(7)
    for _ in range(3):
        code, messages = life(
            forkserver, kill_child.pack_forever, str(path), kill_after=draws.uniform(0, 0.3)
        )
        assert code == KILLED
        _, pid, first, second = messages[0]
        assert path.read_bytes() in (first, second)
        assert isinstance(runtime.load(path), runtime.Model)  # validates the whole file
        assert set(temps_of(path).values()) <= {pid}  # the dead lives' temps are gone
