"""Killed writers: SIGKILL at random moments and inside an atomic write, then resume.

Fine-tuning killed and resumed any number of times ends with exactly the weights of an
uninterrupted run; `pack(path=...)` killed leaves the old file or the new one, never a torn
one; and the temp files that killed writers leave behind are removed by the next write to the
same path, while the temp files of live writers are kept.

The children are forked from a zygote (`kill_child`) that has imported and warmed up torch
and binarize once, so a killed-and-restarted life costs a fork instead of an interpreter
start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
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


class Zygote:
    """The parent's end of `kill_child`'s zygote: run one job per life, SIGKILL it on cue."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.train.kill_child"], cwd=root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.next("serving", timeout=300)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "gone"})

    def next(self, *events: str, timeout: float = 120) -> dict[str, Any]:
        message = self.events.get(timeout=timeout)
        assert message["event"] in events, message
        return message

    def life(
        self, job: str, *args: Any, kill_after: float | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """Run `job(*args)` in a fresh child; SIGKILL it `kill_after` seconds after it says
        it is ready (None: let it end). Returns its exit code and what it reported."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"job": job, "args": args}) + "\n")
        self.process.stdin.flush()
        ready = self.next("ready", "exit")
        if ready["event"] == "exit":  # it failed before its work began (traceback on stderr)
            return ready["code"], []
        messages = [ready]
        if kill_after is not None:
            try:
                messages.append(self.events.get(timeout=kill_after))
            except queue.Empty:
                with contextlib.suppress(ProcessLookupError):  # it ended just now
                    os.kill(ready["pid"], signal.SIGKILL)
        while messages[-1]["event"] != "exit":
            messages.append(self.next("done", "exit", timeout=300))
        return messages[-1]["code"], messages[:-1]

    def close(self) -> None:
        self.process.kill()  # nothing to flush; a clean torch shutdown takes seconds
        self.process.wait()


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    server = Zygote()
    try:
        yield server
    finally:
        server.close()


def assert_same_result(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


@pytest.mark.slow
def test_training_killed_at_random_and_resumed_ends_with_the_uninterrupted_weights(
    zygote: Zygote, tmp_path: Path
) -> None:
    code, messages = zygote.life("train", str(tmp_path / "reference"))
    assert code == 0
    seconds = messages[-1]["seconds"]
    reference = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    assert len(reference["train_loss"]) == kill_child.EPOCHS

    folder = tmp_path / "killed"
    checkpoint = folder / "last.pt"
    # 1. killed inside the checkpoint write of epoch 2: after its temp file is complete,
    #    before the rename. last.pt stays epoch 1's; the dead writer's temp stays behind.
    code, messages = zygote.life("train", str(folder), 2)
    assert code == KILLED
    assert load_checkpoint(checkpoint)["epoch"] == 1
    assert list(temps_of(checkpoint).values()) == [messages[0]["pid"]]
    # 2. killed at seeded random moments, each within its life's first two epochs (of 24, at
    #    the reference's speed): in resume, a training step or a checkpoint write. Five lives
    #    cannot finish the run unless the machine gets twice as fast meanwhile.
    draws, kills = random.Random(20240613), 0
    for _ in range(5):
        epoch = load_checkpoint(checkpoint)["epoch"]
        before = set(temps_of(checkpoint).values())
        code, messages = zygote.life(
            "train", str(folder), kill_after=draws.uniform(0, seconds / 12)
        )
        kills += code == KILLED
        assert code in (KILLED, 0)
        pid = messages[0]["pid"]
        wrote = load_checkpoint(checkpoint)["epoch"] > epoch  # its first write removed them
        assert set(temps_of(checkpoint).values()) <= ({pid} if wrote else before | {pid})
    assert kills == 5
    assert load_checkpoint(checkpoint)["epoch"] < kill_child.EPOCHS
    # 3. the last life resumes and finishes.
    code, _ = zygote.life("train", str(folder))
    assert code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["final.pt", "last.pt"]
    assert_same_result(torch.load(folder / "final.pt", weights_only=True), reference)


@pytest.mark.slow
def test_pack_killed_mid_write_leaves_the_old_file_or_the_new_one(
    zygote: Zygote, tmp_path: Path
) -> None:
    path = tmp_path / "model.bnn"

    def digest(file: Path) -> str:
        return hashlib.sha256(file.read_bytes()).hexdigest()

    # killed on its third write (the first after the two it makes before saying ready),
    # between the complete temp file and the rename: the file is still the second model.
    code, messages = zygote.life("pack_forever", str(path), 3)
    assert code == KILLED
    first, second = messages[0]["digests"]
    assert digest(path) == second
    [(temp, owner)] = temps_of(path).items()
    assert owner == messages[0]["pid"] and digest(tmp_path / temp) == first
    draws = random.Random(7)
    for _ in range(3):
        code, messages = zygote.life("pack_forever", str(path), kill_after=draws.uniform(0, 0.3))
        assert code == KILLED
        assert digest(path) in messages[0]["digests"]
        assert isinstance(runtime.load(path), runtime.Model)  # validates the whole file
        assert set(temps_of(path).values()) <= {messages[0]["pid"]}  # dead lives' temps gone
