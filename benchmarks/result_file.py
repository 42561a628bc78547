"""Every benchmark writes its results file the same way: atomically (a temporary file beside
it, then a rename), so an interrupted run never leaves a half-written table behind."""

from __future__ import annotations

from pathlib import Path

from runtime.atomic import write_atomic


def write_result(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one rename."""
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))
