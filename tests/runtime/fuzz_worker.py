"""The fuzz suite's worker processes and the pool that feeds them (tests/runtime/test_fuzz.py).

Every case (a mutated packed file, ``fuzz_mutations.mutate``) runs ``runtime.load`` and then
``predict`` on a small finite input inside a long-lived worker process, so that a crash
(a signal), a hang or a memory blow-up fails the case instead of the test run:

- the worker's address space is capped (``RLIMIT_AS`` = :data:`ADDRESS_SPACE`, 2 GiB; a
  warmed worker holds ~0.4 GB of address space with numba's LLVM and one TBB thread,
  measured), so a runaway allocation is a ``MemoryError`` or a dead worker, never a swapping
  machine;
- a case gets :data:`CASE_SECONDS` of wall time (generous: one case may compile a new numba
  specialization on a busy machine); past it the worker is killed and replaced;
- the worker loads each file with ``max_memory`` = :data:`MAX_MEMORY` and ``max_work`` =
  :data:`MAX_WORK` (runtime/budget.py), so an accepted file's predict is small by proof, and
  it checks the proof: when a case raises the process's peak RSS, the peak may exceed the RSS
  before the case by at most 16 times the file's bytes (the copies a load makes of the
  parameters), 6 x ``MAX_MEMORY`` (``predict`` itself, and the inputs and the outputs of up
  to 3 samples, each at most ``MAX_MEMORY`` since the budget counts them per sample) and
  :data:`RSS_SLACK`.

A case passes when ``load`` raises ``InvalidModelError`` ("invalid"), or ``predict``
returns finite float32 outputs of the declared shapes ("ran"), or raises ``NonFiniteError``
("nonfinite") or ``InputError`` ("input"). Anything else fails it: another exception
("error"), a ``MemoryError`` or an RSS past the bound ("memory"), outputs that are
non-finite or misshapen ("bad-output"), a dead worker ("crash"), a timeout ("hang"); and an
exception of the mutators themselves ("fuzzer-bug").

Messages on the pipes are length-prefixed pickles between this file's two ends (the parent
runs the same code). Run as a script this module is a worker; ``--replay FILE`` runs one saved
case in the calling process and prints its outcome.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from fuzz_mutations import decode, mutate, pick

import runtime

HERE = Path(__file__).resolve().parent
ADDRESS_SPACE = 2 << 30
MAX_MEMORY = 16 << 20
MAX_WORK = 1 << 26
RSS_SLACK = 192 << 20  # a numba compile of a new specialization, allocator slack
CASE_SECONDS = 60.0
STARTUP_SECONDS = 300.0  # a worker's start, or one base's warm-up (a cold numba cache compiles)
PASSING = ("invalid", "ran", "nonfinite", "input")
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for when the parent dies


# ------------------------------------------------------------------------- one case
def run_case(data: bytes, rng: np.random.Generator) -> tuple[str, str]:
    """Load ``data`` under the fuzz limits and predict a batch of 1-3 finite samples."""
    try:
        model = runtime.load(data, threads=1, max_memory=MAX_MEMORY, max_work=MAX_WORK)
    except runtime.InvalidModelError as error:
        return "invalid", str(error)[:300]
    batch = int(rng.integers(1, 4))
    scale = np.float32(pick(rng, [1.0, 1.0, 30.0, 1e4]))
    xs = {}
    for spec in model.inputs:
        x = rng.standard_normal((batch, *spec.shape[1:]), dtype=np.float32)
        x *= scale
        xs[spec.name] = x
    try:
        outputs = model.predict(xs)
    except runtime.NonFiniteError as error:
        return "nonfinite", str(error)[:300]
    except runtime.InputError as error:
        return "input", str(error)[:300]
    if isinstance(outputs, dict):
        got = [outputs.get(spec.key) for spec in model.outputs]
    else:
        got = list(outputs) if isinstance(outputs, tuple) else [outputs]
    if len(got) != len(model.outputs):
        return "bad-output", f"{len(got)} outputs for {len(model.outputs)} specs"
    for spec, y in zip(model.outputs, got):
        expected = (batch, *spec.shape[1:])
        if not isinstance(y, np.ndarray) or y.dtype != np.float32 or y.shape != expected:
            kind = f"{y.dtype}{list(y.shape)}" if isinstance(y, np.ndarray) else type(y).__name__
            return "bad-output", f"output {spec.name!r} is {kind}, expected float32{expected}"
        if not np.isfinite(y).all():
            return "bad-output", f"output {spec.name!r} holds Inf/NaN and predict did not raise"
    return "ran", ""


def _rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``clear_refs`` 5 resets VmHWM), so a case's peak
    is its own, not one inherited from the process it was forked from; False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """Peak resident bytes since the last reset (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_checked(case: Callable[[], tuple[str, str]], size: int) -> tuple[str, str, int]:
    """``case()`` (``run_case`` on a file of ``size`` bytes) with every other exception and
    the RSS bound turned into an outcome; also returns how far the case raised the peak RSS
    above the RSS before it (0 if the peak did not move)."""
    _reset_peak_rss()
    before, peak_before = _rss(), _peak_rss()
    try:
        outcome, detail = case()
    except MemoryError:
        return "memory", traceback.format_exc(limit=-4), 0
    except Exception:
        return "error", traceback.format_exc(limit=-6), 0
    peak = _peak_rss()
    grown = peak - before if peak > peak_before else 0
    if grown > 16 * size + 6 * MAX_MEMORY + RSS_SLACK:
        detail = f"peak RSS grew {grown / 2**20:.0f} MiB in one case ({outcome}: {detail})"
        return "memory", detail, grown
    return outcome, detail, grown


def _grow() -> tuple[str, str]:
    """Touch 512 MiB (under the address-space cap, over the RSS bound of an empty file)."""
    block = np.ones(512 << 20, np.uint8)
    return "ran", str(block.sum())


PROBES: dict[str, Callable[[], Any]] = {
    "abort": os.abort,
    "sleep": lambda: time.sleep(3600),
    "allocate": lambda: np.ones(ADDRESS_SPACE, np.uint8),
    "grow": _grow,
    "raise": lambda: {}["a key"],
    "nonfinite": lambda: ("nonfinite", "a passing outcome"),
}
"""Misbehaviours a worker can be asked to show (``Pool.probe``), so the tests can check that
the pool reports each one as the failure it is."""


# ------------------------------------------------------------------------------ pipes
def send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message)
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:  # a raw pipe may take fewer bytes per write
        view = view[stream.write(view) or 0 :]
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    """The next message, or None at end of stream (the other side is gone)."""
    head = _read(stream, 8)
    if head is None:
        return None
    data = _read(stream, struct.unpack("<Q", head)[0])
    return None if data is None else pickle.loads(data)


def _read(stream: IO[bytes], size: int) -> bytes | None:
    """Exactly ``size`` bytes (a raw pipe may return fewer per read), or None at the end."""
    parts, missing = [], size
    while missing:
        part = stream.read(missing)
        if not part:
            return None
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def serve() -> None:
    """The worker: answer ``base`` and ``case`` messages until ``stop`` or end of input."""
    writer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to the log, never into the pipe
    if sys.platform.startswith("linux"):  # die with the parent, also while hung in a case
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    reader = sys.stdin.buffer
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    bases: dict[int, tuple[str, dict[str, np.ndarray]]] = {}
    send(writer, ("ready", os.getpid()))
    while (message := receive(reader)) is not None and message[0] != "stop":
        if message[0] == "base":
            _, index, data = message
            bases[index] = decode(data)
            outcome, detail, _ = run_checked(
                functools.partial(run_case, data, np.random.default_rng(index)), len(data)
            )
            send(writer, ("base", index, outcome, detail))
        elif message[0] == "probe":
            outcome, detail, _ = run_checked(PROBES[message[1]], 0)
            send(writer, ("probe", outcome, detail))
        else:
            _, index, seed, case = message
            start = time.perf_counter()
            try:
                data, draft = mutate(bases[index], seed, case)
            except Exception:  # a bug of the mutators, not of the runtime
                send(writer, ("case", case, "fuzzer-bug", traceback.format_exc(), [], 0.0, 0))
                continue
            rng = np.random.default_rng([seed, case, 1])
            outcome, detail, grown = run_checked(functools.partial(run_case, data, rng), len(data))
            seconds = time.perf_counter() - start
            send(writer, ("case", case, outcome, detail, draft.notes, seconds, grown))


# ------------------------------------------------------------------------- the parent
def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(HERE.parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, str(HERE), env.get("PYTHONPATH", "")])
    # one thread each: the pool is the parallelism, and the numbers stay reproducible
    env.update(NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.setdefault("NUMBA_CACHE_DIR", str(HERE.parents[1] / ".cache" / "numba"))
    return env


class WorkerGone(Exception):
    """The worker died or timed out; ``outcome`` is "crash" or "hang"."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.outcome, self.detail = outcome, detail


class Worker:
    """One worker process, its pipes and its log (stderr)."""

    def __init__(self, log: Path) -> None:
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115  (closed in close())
        self.process = subprocess.Popen(  # unbuffered: select() must see every byte
            [sys.executable, __file__],
            bufsize=0,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=worker_env(),
        )
        self.job: tuple[int, int] | None = None  # (base, case) in flight
        self.deadline = 0.0

    def send(self, message: Any) -> None:
        assert self.process.stdin is not None
        try:
            send(self.process.stdin, message)
        except BrokenPipeError:
            raise self.gone() from None

    def receive(self, timeout: float) -> Any:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], max(0.0, timeout))
        if not readable:
            self.close()
            raise WorkerGone("hang", f"no answer in {timeout:.0f} s; log: {self.tail()}")
        message = receive(self.process.stdout)
        if message is None:
            raise self.gone()
        return message

    def gone(self) -> WorkerGone:
        code = self.process.wait(timeout=30)
        self.close()
        return WorkerGone("crash", f"worker exited with code {code}; log: {self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_bytes()[-1500:].decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        self.log.close()


@dataclass
class Results:
    """What a fuzz run saw: outcome counts, by family too, the failures and the slowest case."""

    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_family: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    slowest: tuple[float, int] = (0.0, -1)
    most_grown: int = 0  # the largest rise of a worker's peak RSS in one case, bytes
    restarts: int = 0

    def add(self, base: int, case: int, outcome: str, detail: str, notes: list[str]) -> None:
        self.cases += 1
        self.outcomes[outcome] += 1
        family = notes[0].split(":")[0] if notes else "?"
        self.by_family[family, outcome] += 1
        if outcome not in PASSING:
            self.failures.append(
                {"base": base, "case": case, "outcome": outcome, "detail": detail, "notes": notes}
            )


class Pool:
    """``size`` workers, started one after the other so only the first compiles into a cold
    numba cache; each gets every base first (its warm-up) and is replaced when it dies."""

    def __init__(self, log_dir: Path, size: int = 2, timeout: float = CASE_SECONDS) -> None:
        self.log_dir, self.size, self.timeout = log_dir, size, timeout
        self.bases: list[bytes] = []
        self.workers: list[Worker] = []
        self.started = 0
        self.base_outcomes: list[tuple[str, str]] = []
        self._start()

    def _start(self) -> Worker:
        worker = Worker(self.log_dir / f"worker-{self.started}.log")
        self.started += 1
        message = worker.receive(STARTUP_SECONDS)
        assert message[0] == "ready", message
        for index, data in enumerate(self.bases):
            worker.send(("base", index, data))
        self.workers.append(worker)
        return worker

    def offer(self, bases: Iterable[bytes]) -> None:
        """Send more bases to the workers (they run them while the caller goes on)."""
        for data in bases:
            self.bases.append(data)
            for worker in self.workers:
                worker.send(("base", len(self.bases) - 1, data))

    def warm(self) -> list[tuple[str, str]]:
        """Wait for every base's outcome on every worker, starting the rest of the pool;
        returns the first worker's (outcome, detail) per base."""
        outcomes = self._collect(self.workers[0], 0)
        while len(self.workers) < self.size:
            self._collect(self._start(), 0)
        return outcomes

    def _collect(self, worker: Worker, first: int) -> list[tuple[str, str]]:
        outcomes = []
        for index in range(first, len(self.bases)):
            message = worker.receive(STARTUP_SECONDS)
            assert message[:2] == ("base", index), message
            outcomes.append((message[2], message[3]))
        return outcomes

    def probe(self, what: str, timeout: float | None = None) -> str:
        """The outcome of :data:`PROBES` ``[what]`` in the first worker (replaced if it dies)
        within ``timeout`` seconds (default: the pool's)."""
        worker = self.workers[0]
        worker.send(("probe", what))
        try:
            return worker.receive(self.timeout if timeout is None else timeout)[1]
        except WorkerGone as gone:
            self._replace(worker)
            return gone.outcome

    def _replace(self, worker: Worker) -> Worker:
        self.workers.remove(worker)
        replacement = self._start()
        self._collect(replacement, 0)
        return replacement

    def run(self, seed: int, cases: Iterable[tuple[int, int]]) -> Results:
        """Run (base, case) jobs; a worker that dies or hangs fails its case and is replaced."""
        results = Results()
        jobs = iter(cases)
        idle = list(self.workers)
        busy: list[Worker] = []
        while True:
            while idle:
                job = next(jobs, None)
                if job is None:
                    break
                worker = idle.pop()
                worker.job, worker.deadline = job, time.monotonic() + self.timeout
                worker.send(("case", job[0], seed, job[1]))
                busy.append(worker)
            if not busy:
                return results
            streams = {w.process.stdout: w for w in busy}
            wait = min(w.deadline for w in busy) - time.monotonic()
            readable, _, _ = select.select(list(streams), [], [], max(0.0, wait))
            done = [streams[s] for s in readable] or [
                w for w in busy if w.deadline <= time.monotonic()
            ]
            for worker in done:
                busy.remove(worker)
                assert worker.job is not None
                base, case = worker.job
                try:
                    message = worker.receive(worker.deadline - time.monotonic())
                except WorkerGone as gone:
                    results.add(base, case, gone.outcome, gone.detail, [])
                    results.restarts += 1
                    idle.append(self._replace(worker))
                    continue
                _, answered, outcome, detail, notes, seconds, grown = message
                assert answered == case, (answered, case)
                results.add(base, case, outcome, detail, notes)
                results.slowest = max(results.slowest, (seconds, case))
                results.most_grown = max(results.most_grown, grown)
                idle.append(worker)

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is not None or worker.log.closed:
                worker.close()
                continue
            try:
                worker.send(("stop",))
            except WorkerGone:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=10)
            worker.close()


def replay(path: str) -> None:
    """Run one saved case here, with the worker's limits (the address space too)."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    data = Path(path).read_bytes()
    print(run_case(data, np.random.default_rng(0)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--replay":
        replay(sys.argv[2])
    else:
        serve()
