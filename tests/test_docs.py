"""The project explains itself: no file points at notes that are not shipped, and
docs/OPERATORS.md covers every operator ``operators`` exports."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPERATORS = ROOT / "docs" / "OPERATORS.md"

# Built from pieces so that this file does not contain what it looks for.
UNSHIPPED = tuple(
    (a + b).encode() for a, b in (("PAPERS", ".md"), ("DESIGN", ".md"), ("..", "/shared"))
)


def tracked_files() -> list[Path]:
    """The files git tracks in this checkout (those deleted in the working tree left out)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    paths = [ROOT / name for name in listing.decode().split("\0") if name]
    return [path for path in paths if path.is_file()]


def test_no_tracked_file_cites_the_unshipped_notes():
    files = tracked_files()
    assert len(files) > 50, "git ls-files found almost nothing: the check would prove nothing"
    offenders = []
    for path in files:
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            found = [needle.decode() for needle in UNSHIPPED if needle in line]
            if found:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {', '.join(found)}")
    assert not offenders, (
        "these lines cite notes the project does not ship; state the fact itself or point at "
        "docs/OPERATORS.md:\n" + "\n".join(offenders)
    )


def public_operators() -> list[str]:
    """The classes and functions of ``operators.__all__``."""
    import operators

    return [
        name
        for name in operators.__all__
        if inspect.isclass(getattr(operators, name))
        or inspect.isfunction(getattr(operators, name))
    ]


def test_every_public_operator_of_binarize_nn_is_in_operators_md():
    names = public_operators()
    assert {"RSign", "DyPReLU", "BinaryConv2d", "sign_ste"} <= set(names)
    text = OPERATORS.read_text()
    # named as code: `name`, `name(...)` or `name.attr`, not as a word inside another name
    missing = [name for name in names if not re.search(rf"`{re.escape(name)}\b", text)]
    assert not missing, f"docs/OPERATORS.md does not describe {missing}; add their math there"


def test_operators_md_points_at_files_that_exist():
    text = OPERATORS.read_text()
    files = re.findall(r"`([\w/]+\.(?:py|md))`", text)
    folders = re.findall(r"`([\w/]+/)`", text)
    paths = {*files, *folders}
    assert "binarize/schedule.py" in paths
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert not missing, f"docs/OPERATORS.md names files that do not exist: {missing}"
