"""``runtime.load`` and ``Model``: a validated, planned packed model that predicts on numpy.

model = runtime.load("model.bnn", threads=2)
model.inputs            # (TensorSpec(name="input", shape=(None, 3, 224, 224)),)
y = model.predict(x)    # x float32 [N, 3, 224, 224], C-contiguous, finite
print(model.summary())
print(model.profile(x).table())   # per-step time, share, MACs, MACs per cycle
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numba
import numpy as np

from runtime import profile as profiling
from runtime.budget import DEFAULT_MAX_MEMORY, DEFAULT_MAX_WORK, MAX_CHUNK, Budget, check_budget
from runtime.errors import InputError, NonFiniteError
from runtime.format import PackedModel, Source, read_model
from runtime.graph import Step, plan_graph
from runtime.schema import TensorSpec
from runtime.threads import thread_limits

CHUNK = MAX_CHUNK
"""``predict`` runs large batches at most this many samples at a time (fewer when a chunk of
64 would not fit ``max_memory``, see runtime/budget.py): every op is per sample (BatchNorm
is folded), so the result is the same, and the intermediates stay cache- and memory-sized
(a 10,000-image batch of a 28x28 net would otherwise hold 500 MB per activation)."""

Inputs = np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]
Outputs = np.ndarray | tuple[np.ndarray, ...] | dict[str, np.ndarray]


def load(
    source: Source,
    threads: int | None = None,
    *,
    max_memory: int = DEFAULT_MAX_MEMORY,
    max_work: int = DEFAULT_MAX_WORK,
) -> Model:
    """Read, validate and plan a packed model from a path or bytes.

    ``max_memory`` (bytes of activations and kernel scratch one ``predict`` may hold at once)
    and ``max_work`` (tap visits per sample) bound what the file can ask for; both are proved
    from the graph at load time (runtime/budget.py) and a file beyond them is refused.

    ``threads``: numba threads used by this model's ``predict`` calls (1 to
    ``numba.config.NUMBA_NUM_THREADS``; None = numba's current setting); numpy's BLAS runs
    single-threaded meanwhile. Both are restored after each call, also when several threads
    predict at once (see runtime/threads.py).
    Raises ``InvalidModelError`` for a bad file, before any kernel runs or activation buffer
    is allocated.
    """
    return Model(read_model(source), threads, max_memory=max_memory, max_work=max_work)


class Model:
    """A packed binary network ready to run (build it with ``runtime.load``)."""

    def __init__(
        self,
        packed: PackedModel,
        threads: int | None = None,
        *,
        max_memory: int = DEFAULT_MAX_MEMORY,
        max_work: int = DEFAULT_MAX_WORK,
    ) -> None:
        if threads is not None:
            limit = numba.config.NUMBA_NUM_THREADS
            if (
                isinstance(threads, bool)
                or not isinstance(threads, int)
                or not 1 <= threads <= limit
            ):
                raise ValueError(
                    f"threads must be an integer from 1 to {limit} (numba's thread pool), "
                    f"got {threads!r}"
                )
        self.threads = threads
        self._graph = packed.graph
        self._steps: list[Step] = plan_graph(packed.graph, packed.arrays)
        self.budget: Budget = check_budget(self._graph, self._steps, max_memory, max_work)

    @property
    def work_per_sample(self) -> int:
        """Tap visits (multiply-adds, popcount words, window reads) per sample, proved at load."""
        return self.budget.work_per_sample

    @property
    def memory_per_sample(self) -> int:
        """Peak bytes of activations and kernel scratch per sample, proved at load time;
        ``predict`` holds at most ``memory_per_sample * budget.chunk`` at once."""
        return self.budget.memory_per_sample

    def __repr__(self) -> str:
        def specs(items: Sequence[TensorSpec]) -> str:
            return ", ".join(
                f"{s.name}[" + ", ".join("N" if d is None else str(d) for d in s.shape) + "]"
                for s in items
            )

        return (
            f"Model(inputs: {specs(self.inputs)}; outputs: {specs(self.outputs)}; "
            f"{len(self._steps)} steps from {len(self._graph.nodes)} nodes; threads={self.threads})"
        )

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Name, NCHW (or [N, F]) shape with ``None`` batch, and dtype of each input."""
        return tuple(self._graph.inputs)

    @property
    def plan(self) -> tuple[Step, ...]:
        """The execution plan (runtime/graph.py): one ``Step`` per kernel or numpy call, fused
        chains included, in the order ``predict`` runs them."""
        return tuple(self._steps)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Name and shape of each output, in the order ``predict`` returns them."""
        return tuple(self._graph.outputs)

    def predict(self, x: Inputs) -> Outputs:
        """Run the network on float32 inputs; any batch size N >= 1.

        ``x``: one array for a single-input model, else a sequence in ``inputs`` order or a
        mapping by input name. Each must be a C-contiguous float32 numpy array (not a masked
        array) of shape [N, C, H, W] (or [N, F]) matching the input spec, with finite values
        (checked in blocks, without a batch-sized temporary); anything else
        raises ``InputError`` (nothing is silently converted). Returns float32 arrays, rank-4
        ones in NCHW: one array for a single-output model, else a tuple in ``outputs`` order;
        a dict by output key when the packed model returned a dict (``TensorSpec.key``).
        """
        arrays = self._check_inputs(x)
        batch, chunk = arrays[0].shape[0], self.budget.chunk
        chunks = [
            self._run_checked([a[start : start + chunk] for a in arrays])
            for start in range(0, batch, chunk)
        ]
        results = tuple(
            parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in zip(*chunks)
        )
        keys = [spec.key for spec in self._graph.outputs]
        if keys[0] is not None:  # the file keys all of its outputs or none (runtime/validate.py)
            return dict(zip(keys, results))
        return results[0] if len(results) == 1 else results

    def profile(
        self, x: Inputs, repeats: int = 10, clock_hz: float | None = None
    ) -> profiling.Profile:
        """Time each step of the plan on ``x`` (checked like ``predict``'s input).

        Runs one untimed ``predict`` (warm-up), then ``repeats`` timed passes; each step's
        time is its minimum over the passes. ``clock_hz`` sets the clock for MACs per cycle
        (default: measured, see runtime/clock.py). Returns a ``Profile``; print its
        ``table()``.
        """
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        arrays = self._check_inputs(x)
        batch = arrays[0].shape[0]
        self.predict(arrays)
        best = [float("inf")] * len(self._steps)
        best_wall = float("inf")
        for _ in range(repeats):
            times = [0.0] * len(self._steps)
            start = time.perf_counter()
            for first in range(0, batch, self.budget.chunk):
                self._run([a[first : first + self.budget.chunk] for a in arrays], times)
            best_wall = min(best_wall, time.perf_counter() - start)
            best = [min(b, t) for b, t in zip(best, times)]
        return profiling.build_profile(
            self._steps,
            self._graph.values,
            best,
            best_wall,
            batch=batch,
            threads=self.threads or numba.get_num_threads(),
            repeats=repeats,
            clock_hz=clock_hz,
        )

    def _run_checked(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """``_run``, then a finiteness check of the outputs (about 0.1% of a predict: the
        outputs are small next to the activations). Inputs are finite (``_check_inputs``),
        so a non-finite output means the parameters overflowed: the chunk runs again step by
        step to name the first step that made an Inf or NaN."""
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, by step
            outputs = self._run(arrays)
            if all(np.isfinite(out).all() for out in outputs):
                return outputs
            self._run(arrays, find_non_finite=True)
        raise NonFiniteError("predict produced Inf or NaN outputs from finite inputs")

    def _run(
        self,
        arrays: list[np.ndarray],
        step_times: list[float] | None = None,
        find_non_finite: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """One pass of the plan over a batch chunk; outputs in ``outputs`` order, NCHW.
        With ``step_times`` (one float per step), each step's duration is added to its entry."""
        env: dict[str, np.ndarray] = {}
        for spec, array in zip(self._graph.inputs, arrays):
            env[spec.name] = _to_nhwc(array) if array.ndim == 4 else array
        with thread_limits(self.threads):
            for i, step in enumerate(self._steps):
                inputs = [env[name] for name in step.inputs]
                if step_times is None:
                    step.store(env, step.run(inputs))
                else:
                    start = time.perf_counter()
                    step.store(env, step.run(inputs))
                    step_times[i] += time.perf_counter() - start
                if find_non_finite and not _finite(env[step.output]):
                    raise NonFiniteError(
                        f"step {i} ({step.label}, nodes "
                        f"{', '.join(repr(n.name) for n in step.nodes)}) produced Inf or NaN "
                        "from finite inputs: the packed parameters overflow float32 here. "
                        "Check the model's weights, BatchNorm statistics and scales (re-pack "
                        "from a healthy training run)"
                    )
                for name in step.release:
                    del env[name]
        return tuple(
            np.ascontiguousarray(env[s.name].transpose(0, 3, 1, 2))
            if env[s.name].ndim == 4
            else env[s.name]
            for s in self._graph.outputs
        )

    def _check_inputs(self, x: Inputs) -> list[np.ndarray]:
        specs = self._graph.inputs
        names = [s.name for s in specs]
        if isinstance(x, Mapping):
            missing = [n for n in names if n not in x]
            extra = [n for n in x if n not in names]
            if missing or extra:
                raise InputError(
                    f"predict got inputs {list(x)} but the model takes {names} "
                    f"(missing {missing}, unknown {extra})"
                )
            given = [x[n] for n in names]
        elif isinstance(x, np.ndarray):
            given = [x]
        elif isinstance(x, list | tuple):
            given = list(x)
        else:
            raise InputError(
                f"predict takes a numpy float32 array (or a list/dict of them for several "
                f"inputs), got {type(x).__name__}; convert with np.asarray(x, np.float32)"
            )
        if len(given) != len(specs):
            raise InputError(f"predict got {len(given)} inputs but the model takes {names}")
        batch = None
        for spec, array in zip(specs, given):
            _check_array(spec, array)
            if batch is not None and array.shape[0] != batch:
                raise InputError(
                    f"input {spec.name!r} has batch size {array.shape[0]} but an earlier input "
                    f"has {batch}; all inputs must share the batch dimension"
                )
            batch = array.shape[0]
        return given

    def summary(self) -> str:
        """A plain-text table of the executed steps (fused chains on one row): op(s), node name,
        output shape (NCHW terms), parameter count (each binary weight counts one) and the
        parameters' bytes in the file; totals at the bottom."""
        rows = [("#", "op", "name", "output", "params", "bytes")]
        for i, step in enumerate(self._steps):
            shape = self._graph.values[step.output].shape
            first, last = step.nodes[0].name, step.nodes[-1].name
            rows.append(
                (
                    str(i),
                    step.label,
                    first if first == last else f"{first} .. {last}",
                    "[N, " + ", ".join(map(str, shape)) + "]",
                    f"{step.param_count:,}",
                    f"{step.param_bytes:,}",
                )
            )
        total_params = sum(s.param_count for s in self._steps)
        total_bytes = sum(s.param_bytes for s in self._steps)
        rows.append(("", "total", "", "", f"{total_params:,}", f"{total_bytes:,}"))
        widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
        numeric = {0, 4, 5}

        def line(row: Sequence[str]) -> str:
            cells = [
                cell.rjust(w) if k in numeric else cell.ljust(w)
                for k, (cell, w) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        body = [line(row) for row in rows[1:-1]]
        return "\n".join([line(rows[0]), rule, *body, rule, line(rows[-1])])


def _check_array(spec: TensorSpec, array: object) -> None:
    expected = "[" + ", ".join("N" if d is None else str(d) for d in spec.shape) + "]"
    where = f"input {spec.name!r}"
    if not isinstance(array, np.ndarray):
        raise InputError(
            f"{where} must be a numpy float32 array {expected}, got {type(array).__name__}"
        )
    if isinstance(array, np.ma.MaskedArray):
        raise InputError(
            f"{where} is a masked array; the model has no notion of missing values and would "
            "read the masked entries too: pass x.filled(value) (or np.asarray(x) to use the "
            "data underneath the mask)"
        )
    if array.dtype != np.float32:
        raise InputError(
            f"{where} has dtype {array.dtype} but the model expects float32; convert with "
            "x.astype(np.float32)"
        )
    if array.ndim != len(spec.shape):
        raise InputError(
            f"{where} has rank {array.ndim} (shape {list(array.shape)}) but the model expects "
            f"rank {len(spec.shape)}: {expected}"
        )
    if array.shape[1:] != spec.shape[1:]:
        raise InputError(
            f"{where} has shape {list(array.shape)} but the model expects {expected} "
            "(the spatial size is fixed when the model is packed)"
        )
    if array.shape[0] == 0:
        raise InputError(f"{where} has an empty batch (N = 0); pass at least one sample")
    if not array.flags.c_contiguous:
        raise InputError(
            f"{where} is not C-contiguous (a transposed or strided view); pass "
            "np.ascontiguousarray(x)"
        )
    if not _all_finite(array):
        raise InputError(f"{where} contains NaN or Inf values; the model expects finite inputs")


FINITE_BLOCK = 1 << 18
"""``_all_finite`` checks this many values at a time (1 MiB of float32, a 256 KiB boolean
temporary), so checking a multi-GB batch needs no batch-sized boolean copy."""


def _all_finite(array: np.ndarray) -> bool:
    """Whether every value of a C-contiguous array is finite, in blocks of ``FINITE_BLOCK``
    values (stops at the first block with a NaN or Inf)."""
    flat = array.reshape(-1)
    return all(
        np.isfinite(flat[start : start + FINITE_BLOCK]).all()
        for start in range(0, flat.size, FINITE_BLOCK)
    )


def _to_nhwc(array: np.ndarray) -> np.ndarray:
    """An NCHW array as a new C-contiguous NHWC array. With few channels (an image's 1-4),
    one strided copy per channel plane: numpy's copy of the transposed view walks its
    innermost axis of C elements one pixel at a time (a 3x224x224 image: 0.37 ms against
    0.07 ms per plane, 3-6% of a Bi-Real-18 predict)."""
    if array.shape[1] > _PLANE_COPY_CHANNELS:
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    n, c, h, w = array.shape
    out = np.empty((n, h, w, c), array.dtype)
    for k in range(c):
        out[..., k] = array[:, k]
    return out


_PLANE_COPY_CHANNELS = 8


def _finite(value: np.ndarray) -> bool:
    """Packed bits are always finite; float values are checked."""
    return value.dtype == np.uint64 or bool(np.isfinite(value).all())
