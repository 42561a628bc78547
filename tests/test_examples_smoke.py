"""The examples end to end, tiny (`--smoke`): they use only the public API (convert,
finetune, pack, runtime), so a run that finishes and reports a packed model agreeing with its
PyTorch student is an end-to-end test. Each runs in a subprocess, as a user would start it."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLASSIFICATION = REPO / "examples" / "classification"
PNG = b"\x89PNG\r\n\x1a\n"

pytest.importorskip("matplotlib", reason="the examples' plots need the [examples] extra")


def run_example(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(REPO / ".cache" / "numba")}
    command = [sys.executable, str(script), "--smoke", "--jobs", "1",
               "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_ladder_is_one_change_per_rung_and_ends_at_bulat() -> None:
    spec = importlib.util.spec_from_file_location("ablation_rows", CLASSIFICATION / "rows.py")
    rows = sys.modules["ablation_rows"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rows)
    from binarize import recipes

    ladder = [row.recipe for row in rows.ladder()]
    assert ladder[-1] == recipes.get("bulat")
    parts = ("binarizer", "activations", "schedule", "distillation")
    for before, after in itertools.pairwise(ladder):
        changed = [p for p in parts if getattr(before, p) != getattr(after, p)]
        # progressive lambda changes the binarizer and adds the ramp to the schedule together
        assert changed in (["activations"], ["schedule"], ["binarizer", "schedule"],
                           ["distillation"]), changed
    assert ladder[0].activations.kind is None and ladder[0].distillation.kind is None
    one_stage = [row for row in rows.schedule_question() if "one stage" in row.name]
    assert {len(row.recipe.schedule.stages) for row in one_stage} == {1}


def test_classification_ablation_smoke(tmp_path: Path) -> None:
    run_example(CLASSIFICATION / "ablation.py", tmp_path)
    out = tmp_path / "out"
    records = json.loads((out / "results.json").read_text())
    binary = [r for r in records if r["name"] != "float"]
    # 5 rungs + 4 recipes + 8 schedule rows + 4 distillation rows; the registered reactnet and
    # dybnn (one stage on the labels by default) are the "labels only" short runs, run once
    # and reported under both names
    assert len(records) == 22 and len(binary) == 21
    assert len({(r["name"], r["budget"]) for r in binary}) == 21
    by_name = {(r["name"], r["budget"]): r for r in binary}
    for recipe in ("reactnet", "dybnn"):
        same = by_name[recipe, "short"], by_name[f"{recipe} labels only", "short"]
        assert same[0]["test_accuracy"] == same[1]["test_accuracy"]
    for record in binary:  # the packed file answers as the PyTorch student does
        assert record["runtime_agreement"] >= 0.95, record
        assert abs(record["runtime_accuracy"] - record["test_accuracy"]) <= 0.05, record
    long_runs = [r for r in binary if r["budget"] == "long"]
    assert {r["epochs"] for r in long_runs} == {2} and len(long_runs) == 6
    results = (out / "RESULTS.md").read_text()
    for name in ("float resnet_small", "1 sign+STE, ReLU kept", "5 + distillation (= bulat)",
                 "xnor", "bireal", "reactnet", "dybnn", "| reactnet | 2 |",
                 "vs the labels only"):
        assert name in results
    for plot in ("accuracy.png", "curves.png"):
        assert (out / plot).read_bytes()[:8] == PNG


def test_pose_smoke(tmp_path: Path) -> None:
    run_example(REPO / "examples" / "pose" / "run.py", tmp_path)
    out = tmp_path / "out"
    records = json.loads((out / "results.json").read_text())
    floats = [r for r in records if r["recipe"] is None]
    binary = [r for r in records if r["recipe"] is not None]
    assert sorted(r["stacks"] for r in floats) == [1, 2, 3] and len(binary) == 7
    for record in binary:  # the packed hourglass (list outputs) scores as PyTorch does
        assert abs(record["runtime_minus_torch_points"]) <= 0.5, record
        assert record["runtime_ms"] > 0 and record["packed_bytes"] > 0
    results = (out / "RESULTS.md").read_text()
    assert "SYNTHETIC" in results and "reactnet, 3 stacks" in results
    assert "no distillation" in results
    assert "distillation (reactnet, 2 stacks)" in results  # the effects table
    for plot in ("skeletons.png", "curves.png"):
        assert (out / plot).read_bytes()[:8] == PNG
