"""Compile the runtime's numba kernels into numba's on-disk cache before the first predict.

Every kernel is ``@njit(cache=True)`` without a signature: numba compiles it at its first
call, for the argument types of that call, and saves the machine code under
``NUMBA_CACHE_DIR`` (default: ``__pycache__`` beside the sources). A later process loads it
instead of compiling. Compiling is the cold start of a fresh environment (a container, a
CI runner): a ResNet-18-sized model's first predict takes tens of seconds there, a fraction
of a second once the cache holds its kernels. ``python -m runtime warmup`` fills the cache
at build time:

* ``warmup(paths)`` loads each model and predicts on seeded standard-normal inputs of batch
  1 and 2, which compiles exactly the kernels (and argument types) that model uses;
* ``warmup()`` without models runs :func:`coverage_models`: for every op of the registry
  (``runtime.registry.all_ops``) a tiny graph with that op alone, at each input rank it takes
  (bits inputs behind a ``quantize``, bits outputs read by a 1x1 ``bconv2d`` / ``bdense``);
  for every producer (conv, dense, their binary versions) a chain the plan fuses into one
  kernel call (producer -> affine -> add -> rprelu -> quantize), and for a producer that can
  absorb a max pool, that fusion (``_pooled``); plus :data:`VARIANTS`, the attrs that route
  an op to another kernel (a depthwise, grouped or deep conv). Required attrs are filled
  from :data:`FILL`. Both also compile the profiler's clock (``runtime.clock``) and the bench
  command's second-thread probe (``runtime.cores``). It then checks that every kernel of the
  runtime (each non-inlined ``numba`` dispatcher in the ``runtime`` package) was compiled or
  loaded; a kernel no graph reached is reported, so a new op or kernel cannot be forgotten
  here silently.

The kernels' types do not depend on sizes (batch, channels, spatial size): one compiled
specialization per kernel serves every layer of every model.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba.core.registry import CPUDispatcher

import runtime
from runtime.clock import measure_clock_hz
from runtime.cores import second_thread_gain
from runtime.errors import InvalidModelError
from runtime.format import write_model
from runtime.model import Model, load
from runtime.registry import REQUIRED, OpDef, all_ops, make_node
from runtime.schema import Graph, Node, TensorSpec, ValueInfo

CHANNELS = 8
SIZE = 6
SHAPES = {4: (CHANNELS, SIZE, SIZE), 2: (CHANNELS,)}
"""The input value of the coverage graphs at each rank (NCHW terms, without the batch)."""

FILL: dict[str, Callable[[ValueInfo], Any]] = {
    "channels": lambda x: x.channels,
    "in_channels": lambda x: x.channels,
    "in_features": lambda x: x.channels,
    "out_channels": lambda x: x.channels,
    "out_features": lambda x: x.channels,
    "hidden": lambda x: 4,
    "groups": lambda x: 2,
    "kernel": lambda x: [3, 3],
    "size": lambda x: [2, 2],
    "scale": lambda x: [2, 2],
    "start": lambda x: 2,
    "stop": lambda x: x.channels - 2,
}
"""Values of the required attrs, by name, given the op's (first) input."""

VARIANTS: dict[str, list[dict[str, Any]]] = {
    "conv2d": [  # runtime/kernels/conv.py: each routes to its own kernel
        {"groups": CHANNELS},  # depthwise
        {"groups": 2},  # grouped, not depthwise: the grouped im2col tile
        # K = 9*9*8 = 648, past the direct FMA kernel's 512: im2col + BLAS tiles
        {"kernel": [9, 9], "padding": [4, 4]},
    ],
}
"""Extra attrs per op that reach another kernel than the defaults do."""


@dataclass(frozen=True)
class KernelState:
    """One numba kernel after a warm-up: ``compiled`` specializations compiled in this
    process (and saved to the cache), ``loaded`` ones read from the cache."""

    name: str
    compiled: int
    loaded: int
    cache_path: str

    @property
    def ready(self) -> bool:
        return self.compiled + self.loaded > 0


@dataclass(frozen=True)
class WarmupReport:
    """What a warm-up did: the models it ran, the seconds it took, every kernel's state."""

    models: list[str]
    seconds: float
    kernels: list[KernelState]

    @property
    def missing(self) -> list[str]:
        """Kernels of the runtime that nothing compiled or loaded."""
        return [k.name for k in self.kernels if not k.ready]

    def table(self) -> str:
        width = max(len(k.name) for k in self.kernels)
        lines = [f"{'kernel'.ljust(width)}  compiled  from cache"]
        lines += [
            f"{k.name.ljust(width)}  {k.compiled:8d}  {k.loaded:10d}"
            for k in self.kernels
            if k.ready
        ]
        unused = len(self.missing)
        folders = sorted({k.cache_path for k in self.kernels if k.ready})
        lines.append(
            f"{len(self.models)} model(s) in {self.seconds:.1f} s; "
            f"{len(self.kernels) - unused} of {len(self.kernels)} kernels ready"
            + (f" ({unused} not used: {', '.join(self.missing)})" if unused else "")
        )
        lines.append("numba cache: " + (", ".join(folders) if folders else "(none)"))
        return "\n".join(lines)


def kernels() -> dict[str, CPUDispatcher]:
    """Every numba kernel of the runtime by ``module.function``: the dispatchers defined in
    the ``runtime`` package, less those inlined into their callers (never compiled alone)."""
    found: dict[str, CPUDispatcher] = {}
    for info in pkgutil.walk_packages(runtime.__path__, "runtime."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, CPUDispatcher)
                and value.py_func.__module__ == info.name
                and value.targetoptions.get("inline", "never") == "never"
            ):
                found[f"{info.name}.{name}"] = value
    return found


def sample_inputs(model: Model, batch: int) -> list[np.ndarray]:
    """Seeded standard-normal float32 inputs of ``model``'s input shapes, batch ``batch``."""
    rng = np.random.default_rng(0)
    return [
        rng.standard_normal((batch, *spec.shape[1:]), dtype=np.float32) for spec in model.inputs
    ]


def warmup(paths: Sequence[str] = (), batches: Sequence[int] = (1, 2)) -> WarmupReport:
    """Predict once per batch size on each model of ``paths`` (none: the coverage models),
    so numba compiles (or loads) their kernels into its cache; report every kernel's state."""
    start = time.perf_counter()
    sources: list[tuple[str, Any]] = (
        [(path, path) for path in paths] if paths else list(coverage_models())
    )
    for _, source in sources:
        model = load(source)
        for batch in batches:
            model.predict(sample_inputs(model, batch))
    measure_clock_hz(tries=1)  # Model.profile's clock kernel, which no predict runs
    second_thread_gain(repeats=10, tries=1)  # the bench command's probe (runtime/cores.py)
    seconds = time.perf_counter() - start
    states = []
    for name, dispatcher in kernels().items():
        stats = dispatcher.stats
        states.append(
            KernelState(
                name,
                compiled=len(stats.cache_misses),
                loaded=len(stats.cache_hits),
                cache_path=str(stats.cache_path),
            )
        )
    return WarmupReport([name for name, _ in sources], seconds, states)


def coverage_models() -> Iterator[tuple[str, bytes]]:
    """(description, packed bytes) of the tiny graphs that reach every kernel (module doc)."""
    for op in all_ops().values():
        for rank in op.inputs.ranks:
            for extra in [{}, *VARIANTS.get(op.name, [])]:
                yield f"{op.name} rank {rank} {extra or ''}".strip(), _alone(op, rank, extra)
        if op.fusion == "producer":
            yield f"{op.name} fused chain", _chain(op)
        if op.prepare_maxpool is not None:
            yield f"{op.name} fused with a max pool", _pooled(op)


class _Builder:
    """A graph under construction with the info of each value (for shapes and attrs)."""

    def __init__(self, rank: int) -> None:
        self.rng = np.random.default_rng(0)
        self.nodes: list[Node] = []
        self.values = {"input": ValueInfo("float", SHAPES[rank])}

    def add(self, op: OpDef, inputs: list[str], attrs: dict[str, Any] | None = None) -> str:
        """Append ``op`` on ``inputs``: required attrs from FILL (``attrs`` override),
        params of the declared dtypes and first allowed shapes (small values, valid bits)."""
        ins = [self.values[name] for name in inputs]
        raw = dict(attrs or {})
        for attr in op.attrs:
            if attr.default is REQUIRED and not attr.default_from and attr.name not in raw:
                if attr.name not in FILL:
                    raise InvalidModelError(
                        f"the warm-up has no value for the required attr {attr.name!r} of op "
                        f"{op.name!r}; add one to FILL in runtime/warmup.py"
                    )
                raw[attr.name] = FILL[attr.name](ins[0])
        name = f"n{len(self.nodes)}"
        _, out, specs = op.check(f"warm-up node {name} ({op.name})", raw, ins)
        params = {role: self._param(spec.dtype, spec.shapes[0]) for role, spec in specs.items()}
        self.nodes.append(make_node(op.name, name, inputs, raw, params))
        self.values[name] = out
        return name

    def _param(self, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        if dtype == "float32":
            return (0.1 * self.rng.standard_normal(shape)).astype(np.float32)
        if dtype == "int8":
            return np.ones(shape, np.int8)  # signs
        return np.zeros(shape, np.dtype(dtype))  # bit words: padding bits must be 0

    def to_float(self, value: str) -> str:
        """``value``, or a 1x1 binary layer reading it when it holds bits."""
        info = self.values[value]
        if info.kind == "float":
            return value
        op = "bconv2d" if info.rank == 4 else "bdense"
        return self.add(all_ops()[op], [value], {"kernel": [1, 1]} if info.rank == 4 else {})

    def to_bytes(self, last: str) -> bytes:
        spec = TensorSpec(last, (None, *self.values[last].shape))
        program = Graph([TensorSpec("input", (None, *SHAPES[self.values["input"].rank]))],
                        [spec], self.nodes)  # fmt: skip
        return write_model(None, *program.to_file_parts())


def _alone(op: OpDef, rank: int, extra: dict[str, Any]) -> bytes:
    ops = all_ops()
    b = _Builder(rank)
    x = "input"
    if op.inputs.kind == "bits":
        x = b.add(ops["quantize"], [x])
    count = 2 if op.inputs.count is None else op.inputs.count
    return b.to_bytes(b.to_float(b.add(op, [x] * count, extra)))


def _chain(op: OpDef) -> bytes:
    ops = all_ops()
    rank = op.inputs.ranks[0]
    b = _Builder(rank)
    x = b.add(ops["quantize"], ["input"]) if op.inputs.kind == "bits" else "input"
    same_size = {"padding": [1, 1]} if "padding" in op.attr_names else {}
    y = b.add(ops["affine"], [b.add(op, [x], same_size)])
    y = b.add(ops["quantize"], [b.add(ops["rprelu"], [b.add(ops["add"], [y, "input"])])])
    return b.to_bytes(b.to_float(y))


def _pooled(op: OpDef) -> bytes:
    """producer -> relu -> maxpool2d, whose output feeds a quantize (the fused
    step's side output) and a shortcut add."""
    ops = all_ops()
    b = _Builder(op.inputs.ranks[0])
    direct = {"padding": [1, 1], "groups": 1}  # FILL gives groups 2: not the direct kernel
    y = b.add(ops["relu"], [b.add(op, ["input"], direct)])  # its bias is the affine
    pooled = b.add(ops["maxpool2d"], [y], {"stride": [2, 2], "padding": [1, 1]})
    return b.to_bytes(b.add(ops["add"], [b.to_float(b.add(ops["quantize"], [pooled])), pooled]))


__all__ = ["KernelState", "WarmupReport", "coverage_models", "kernels", "sample_inputs", "warmup"]
