"""Fuzzing real packed files: every mutated file is refused at load or runs bounded and finite.

The bases are real files: ``binarize.convert`` + ``binarize.pack`` of ``resnet_small`` and
``SmallCNN`` with the reactnet and dybnn recipes (at 12x12, width 8), and builder graphs
(tests/runtime/rt_builder.py) that between them use every op of ``runtime.registry``. Each
case mutates one base with ``fuzz_mutations.mutate`` (attrs, shapes, names, offsets, dtypes,
metadata, tensor contents, bytes) and runs it in a worker process of ``fuzz_worker.Pool``
(memory-capped, timed out, replaced when it dies); what passes and fails is defined there.

``FUZZ_CASES`` (default 5000) sets the number of cases and ``FUZZ_SEED`` the seed; under CI
(``CI`` set) the seed is 0, so a red run replays exactly, otherwise it is drawn per run. The
count, the seed and the outcome histogram are printed in the terminal summary
(``tests/conftest.py``). A failing case is saved under the test's tmp_path; replay it with
``python tests/runtime/fuzz_worker.py --replay FILE``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fuzz_mutations import decode, mutate
from fuzz_worker import MAX_MEMORY, MAX_WORK, PROBES, Pool, Results, run_case
from rt_builder import IRBuilder

import runtime
from runtime.registry import all_ops, get
from runtime.schema import ValueInfo

CASES = int(os.environ.get("FUZZ_CASES", "5000"))
SEED = int(os.environ.get("FUZZ_SEED", "0" if os.environ.get("CI") else random.randrange(2**31)))


def _generic(b: IRBuilder, op: str, inputs: list[str], attrs: dict) -> str:
    """A node of ``op`` with float32 params shaped by the registry (ops without a helper)."""
    ins = [ValueInfo(b.kinds[x], b.shapes[x]) for x in inputs]
    _, _, specs = get(op).check(op, attrs, ins)
    params = {role: b.f32(*spec.shapes[0], scale=0.3) + 1 for role, spec in specs.items()}
    return b.node(op, inputs, attrs, params)


def binary_chain() -> IRBuilder:
    """The binary ops with every fused epilogue, pools with padding and ceil_mode, a
    dynamic quantizer, a 70-channel value (a word and a partial one), two keyed outputs."""
    b = IRBuilder(seed=11)
    x = b.input([6, 8, 8])
    h = b.rprelu(b.affine(b.bconv2d(b.quantize(x, signed=True), 70, pad_value=-1)))
    full = b.prelu(b.unary("leaky_relu", h, negative_slope=0.1))  # 8 x 8
    m = b.pool("maxpool2d", full, kernel=3, stride=2, padding=1, ceil_mode=True)  # 5 x 5
    a = b.pool("avgpool2d", full, kernel=3, stride=2, padding=1, ceil_mode=True,
               count_include_pad=False)  # fmt: skip
    h = b.add(m, a)
    h = b.dyprelu(b.affine(b.bconv2d(b.dyquantize(h, hidden=5), 12, stride=2, pad_value=1)))
    side = b.unary("clamp", b.pool("maxpool2d", full, kernel=3, stride=1), min=-1.0, max=2.0)
    h = b.concat([b.upsample(h, 2, 2), side])  # 6 x 6
    flat = b.unary("flatten", b.unary("global_avgpool", b.unary("relu", h)))
    for key, value in [("logits", b.dense(flat, 5)),
                       ("aux", b.affine(b.bdense(b.quantize(flat, signed=True), 3)))]:
        b.outputs.append({"name": value, "shape": [None, *b.shapes[value]], "key": key})
    return b


def float_chain() -> IRBuilder:
    """The float ops: grouped and dilated conv, the smooth activations, mul, the structural
    ops, LayerNorm over channels, and a second (rank-2) input."""
    b = IRBuilder(seed=12)
    x = b.input([4, 10, 10])
    side = b.input([7], name="side")
    h = b.conv2d(x, 8, kernel=3, padding=2, dilation=2, groups=2)
    h = b.unary("gelu", b.unary("silu", h), approximate="tanh")
    h = b.node("mul", [b.unary("hardswish", h), b.unary("sigmoid", h)])
    h = b.node("channel_shuffle", [b.unary("hardsigmoid", h)], {"groups": 4})
    h = _generic(b, "layernorm_channels", [h], {"channels": 8, "eps": 1e-3})
    h = b.add(b.node("adaptive_avgpool2d", [h], {"size": [3, 4]}),
              b.node("adaptive_maxpool2d", [h], {"size": [3, 4]}))  # fmt: skip
    h = b.node("upsample_bilinear", [h], {"size": [5, 6], "align_corners": True})
    flat = b.unary("flatten", b.node("channel_slice", [h], {"start": 2, "stop": 6}))
    b.output(b.add(b.dense(flat, 7), _generic(b, "layernorm_channels", [side], {"channels": 7})))
    return b


BUILDERS: dict[str, Callable[[], IRBuilder]] = {"binary": binary_chain, "float": float_chain}


def real_bases() -> dict[str, bytes]:
    """resnet_small and SmallCNN, converted and packed with reactnet and dybnn (seeded)."""
    import torch

    import binarize
    from binarize.models import SmallCNN, resnet_small

    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    bases = {}
    for name, make in [("resnet_small", resnet_small), ("SmallCNN", SmallCNN)]:
        for recipe in ("reactnet", "dybnn"):
            torch.manual_seed(0)
            model = make(num_classes=5, width=8).eval()
            bnn = binarize.convert(model, recipe=recipe, example_inputs=(x,))
            bases[f"{name}-{recipe}"] = binarize.pack(bnn, (x,))
    return bases


def test_the_builder_bases_use_every_op() -> None:
    used = {node["op"] for make in BUILDERS.values() for node in make().nodes}
    missing = sorted(set(all_ops()) - used)
    assert not missing, f"add a node of {missing} to a base graph in {__file__}"


def test_the_mutations_are_reproducible() -> None:
    base = decode(binary_chain().to_bytes())
    assert [mutate(base, 7, case)[0] for case in range(40)] == [
        mutate(base, 7, case)[0] for case in range(40)
    ]
    assert len({mutate(base, 7, case)[0] for case in range(40)}) > 30


def summary(results: Results, names: list[str], warm: float, seconds: float) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in results.outcomes.most_common())
    families = sorted({family for family, _ in results.by_family})
    rows = []
    for family in families:
        counts = {o: n for (f, o), n in sorted(results.by_family.items()) if f == family}
        total = sum(counts.values())
        rows.append(f"{family} {total} ({', '.join(f'{o} {n}' for o, n in counts.items())})")
    slow, case = results.slowest
    return (
        f"fuzz: {results.cases} cases on {len(names)} bases (seed {SEED}) in {seconds:.1f} s "
        f"({warm:.1f} s building the bases and warming the workers): "
        f"{outcomes}; {len(results.failures)} failures, {results.restarts} worker restarts; "
        f"slowest case {case} {slow:.2f} s; largest peak-RSS rise in a case "
        f"{results.most_grown / 2**20:.0f} MiB\n  by family: " + "; ".join(rows)
    )


def test_mutated_files_are_refused_or_run_bounded_and_finite(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    start = time.perf_counter()
    pool = Pool(tmp_path)
    try:
        builders = {name: make().to_bytes() for name, make in BUILDERS.items()}
        pool.offer(builders.values())  # the first worker warms up on these meanwhile
        bases = {**builders, **real_bases()}
        pool.offer(list(bases.values())[len(builders) :])
        names = list(bases)
        for name, (outcome, detail) in zip(names, pool.warm()):
            assert outcome == "ran", f"base {name} must load and run under the limits: {detail}"
        warm = time.perf_counter() - start
        results = pool.run(SEED, ((case % len(names), case) for case in range(CASES)))
    finally:
        pool.close()
    seconds = time.perf_counter() - start
    record_property("terminal_summary", summary(results, names, warm, seconds))

    assert results.cases == CASES
    reports = []
    decoded = {name: decode(data) for name, data in bases.items()}
    for failure in results.failures[:10]:
        name = names[failure["base"]]
        data, draft = mutate(decoded[name], SEED, failure["case"])
        saved = tmp_path / f"case-{failure['case']}.bnn"
        saved.write_bytes(data)
        reports.append(
            f"case {failure['case']} on {name}: {failure['outcome']}: {failure['detail']}\n"
            f"  mutations: {draft.notes}\n  replay: python tests/runtime/fuzz_worker.py "
            f"--replay {saved}"
        )
    assert not results.failures, f"{len(results.failures)} failing cases:\n" + "\n".join(reports)
    # the mutations reach predict, not only the checks of load: some run, some overflow
    # (about 10% and 1% of the cases, measured)
    assert results.outcomes["ran"] > 0.05 * CASES
    assert results.outcomes["nonfinite"] > 0.004 * CASES


def test_the_pool_reports_each_kind_of_failure(tmp_path: Path) -> None:
    """The harness can fail: an exception, an allocation past the cap, an RSS past the
    bound, a dead worker and a hung one are each reported as such (and the pool goes on)."""
    pool = Pool(tmp_path, size=1)
    try:  # the sleeping worker is given 3 s; the others the pool's time (a busy machine)
        got = {what: pool.probe(what, 3 if what == "sleep" else None) for what in PROBES}
    finally:
        pool.close()
    assert got == {
        "abort": "crash",
        "sleep": "hang",
        "allocate": "memory",
        "grow": "memory",
        "raise": "error",
        "nonfinite": "nonfinite",
    }


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_base_runs_in_process_too(name: str) -> None:
    """The worker's case function on an unmutated base (what the pool's warm-up checks)."""
    data = BUILDERS[name]().to_bytes()
    assert run_case(data, np.random.default_rng(0)) == ("ran", "")
    model = runtime.load(data, max_memory=MAX_MEMORY, max_work=MAX_WORK)
    assert model.work_per_sample <= MAX_WORK
