"""The public names users call are the functions, even after their submodules are imported."""

from __future__ import annotations

import importlib
import subprocess
import sys


def test_public_functions_are_not_shadowed_by_submodules() -> None:
    code = (
        "import binarize.pack, binarize.summary, binarize.convert, passes.export.lower, binarize\n"
        "for name in ('convert', 'pack', 'summary', 'finetune'):\n"
        "    assert callable(getattr(binarize, name)), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_top_level_names() -> None:
    binarize = importlib.import_module("binarize")
    for name in binarize.__all__:
        assert hasattr(binarize, name), name
