"""Imports go one way, package by package: runtime <- operators <- passes <- binarize.

* ``runtime`` imports nothing of the project (a deployed model has no torch);
* ``operators`` (the binary layers, binarizers and the library's errors) imports only itself;
* ``passes`` imports ``operators`` and ``runtime``, never ``binarize``;
* ``binarize`` (the API: ``convert``, ``pack``, ``summary``, ``finetune``, ``recipes``, and the
  user-facing re-exports ``binarize.nn`` / ``binarize.errors``) may import all three;
* so no two packages import each other, not even inside a function, and ``import binarize``
  stays cheap (its API names load on first use).

Two checks: every module of the four packages imports alone, in a process where no project
module was loaded before; and a static check of every import statement (module level, inside
functions, under ``if TYPE_CHECKING:``) against the layers.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("binarize", "operators", "passes", "runtime")
LAYERS = ("runtime", "operators", "passes", "binarize")
"""Lowest first: a package may import itself and the packages before it, nothing after."""


def module_name(path: Path) -> str:
    """``operators/layers.py`` -> ``operators.layers``; a package's ``__init__`` -> the
    package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    """Every module of the four packages, by dotted name, found by walking the source tree."""
    files = (path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py")))
    return {module_name(path): path for path in files if "__pycache__" not in path.parts}


MODULES = project_files()

# One fresh interpreter loads the third-party libraries once, then forks a child per module
# (two at a time): each child starts with no project module in sys.modules, exactly as
# `python -c "import X"` would, but torch's 2-4 s import is paid once instead of once per
# module. A child reports the traceback of a failed import and the project modules it loaded.
FORKING_IMPORTER = textwrap.dedent(
    """
    import collections, importlib, json, os, sys, traceback
    import numba, numpy, safetensors.numpy, torch, torch.fx  # noqa: F401

    PACKAGES = ("binarize", "operators", "passes", "runtime")
    assert not [m for m in sys.modules if m.split(".")[0] in PACKAGES]

    def start(name):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                importlib.import_module(name)
                report = {"error": None}
            except BaseException:
                report = {"error": traceback.format_exc()}
            report["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in PACKAGES)
            with os.fdopen(write, "w") as pipe:
                json.dump(report, pipe)
            os._exit(0)
        os.close(write)
        return name, pid, read

    def finish(name, pid, read):
        with os.fdopen(read) as pipe:
            text = pipe.read()
        _, status = os.waitpid(pid, 0)
        results[name] = json.loads(text) if text else {"error": f"child died ({status})"}

    results, running = {}, collections.deque()
    for name in sys.argv[1:]:
        if len(running) == 2:
            finish(*running.popleft())
        running.append(start(name))
    while running:
        finish(*running.popleft())
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, dict]:
    """For every project module: the error of importing it alone (None) and what it loaded."""
    if not hasattr(os, "fork"):
        pytest.skip("the per-module import check forks a clean process per module (POSIX)")
    result = subprocess.run(
        [sys.executable, "-c", FORKING_IMPORTER, *MODULES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_source_tree_walk_finds_every_package() -> None:
    for name in ("binarize", "operators.layers", "passes.base", "runtime.kernels.bconv"):
        assert name in MODULES


def test_every_module_imports_alone_in_a_fresh_process(imported_alone: dict[str, dict]) -> None:
    assert sorted(imported_alone) == sorted(MODULES)
    failed = {name: report["error"] for name, report in imported_alone.items() if report["error"]}
    assert not failed, "\n".join(f"--- import {name}:\n{error}" for name, error in failed.items())


def test_importing_the_binarize_package_loads_no_pass(imported_alone: dict[str, dict]) -> None:
    """``import binarize`` is cheap and pass-free: the API names load on first use."""
    loaded = imported_alone["binarize"]["loaded"]
    assert not [m for m in loaded if m.startswith("passes")], loaded
    operators = imported_alone["operators"]["loaded"]
    assert not [m for m in operators if m.startswith(("passes", "runtime"))], operators


def imported_modules(source: str, package: str) -> set[str]:
    """Project modules an import statement anywhere in ``source`` names (also inside functions
    and ``if TYPE_CHECKING:``). ``from binarize import nn`` names ``binarize.nn``, ``from
    operators import BinaryConv2d`` names ``operators``; relative imports are resolved
    against ``package`` (the package the module is in)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, node.module or ""]).strip(".") if node.level else node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else str(base))
    return {name for name in found if name.split(".")[0] in PACKAGES}


def imports_of(name: str) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imported_modules(path.read_text(), package)


def layer_violations(name: str, imports: set[str]) -> list[str]:
    """The imports of module ``name`` that go against the layering (module docstring)."""
    allowed = LAYERS[: LAYERS.index(name.split(".")[0]) + 1]
    return sorted(other for other in imports if other.split(".")[0] not in allowed)


def test_every_import_follows_the_layers() -> None:
    bad = {name: layer_violations(name, imports_of(name)) for name in MODULES}
    bad = {name: imports for name, imports in bad.items() if imports}
    assert not bad, f"imports against the layering (module: what it imports): {bad}"


def test_no_two_packages_import_each_other() -> None:
    """Counted by top-level package, over every import statement of every module."""
    edges = {
        (name.split(".")[0], other.split(".")[0])
        for name in MODULES
        for other in imports_of(name)
        if other.split(".")[0] != name.split(".")[0]
    }
    both_ways = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not both_ways, f"packages that import each other: {both_ways}"
    assert ("passes", "operators") in edges and ("binarize", "passes") in edges  # the walk works


def test_the_layer_check_can_fail() -> None:
    source = textwrap.dedent(
        """
        import torch
        from binarize import nn, recipes
        from operators.layers import BinaryConv2d
        from . import base
        from ..runtime.errors import InputError

        def later():
            import binarize.convert
        """
    )
    found = imported_modules(source, "passes")
    assert found == {"binarize.nn", "binarize.recipes", "operators.layers", "passes.base",
                     "runtime.errors", "binarize.convert"}  # fmt: skip
    assert layer_violations("passes.x", found) == [
        "binarize.convert", "binarize.nn", "binarize.recipes"
    ]  # fmt: skip
    assert layer_violations("runtime.x", {"operators.errors", "runtime.errors"}) == [
        "operators.errors"
    ]
    assert layer_violations("operators.x", {"passes.base", "operators.errors"}) == ["passes.base"]
    assert layer_violations("binarize.convert", {"passes.base", "runtime.format"}) == []
