"""Atomic file writes that clean up after writers that were killed.

``write_atomic(path, write)`` streams into a temporary sibling ``.<name>.<pid>-<random>.tmp``,
fsyncs it, renames it over ``path`` with ``os.replace`` and fsyncs the folder: a crash at any
point leaves the previous file or the new one, never a torn one. A writer killed with
SIGKILL (or by a power cut) cannot remove its temporary file, so every write first removes
the temporary files *for the same path* whose writer process no longer exists; the pid in
the name tells whose it is. A live writer's file is never touched, so two processes may write
to one folder at once (the last rename wins). Liveness is ``os.kill(pid, 0)`` on this host: a
folder shared between hosts can hold another host's temporary files, which look dead here
only if that pid is free here too, and a recycled pid keeps a stale file until it exits.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temporary sibling of ``path``, then rename it into place.

    Stale temporary files of ``path`` (their writer is dead) are removed first. Raises the
    ``OSError`` of a failed write (or whatever ``write`` raises) with the temporary file
    removed and any previous ``path`` untouched.
    """
    path = Path(path)
    folder = path.parent
    remove_stale_temps(path)
    fd, temp_name = tempfile.mkstemp(
        dir=folder, prefix=f".{path.name}.{os.getpid()}-", suffix=TEMP_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself where the OS allows it
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)


def temp_owner(path: str | os.PathLike, candidate: str) -> int | None:
    """The writer pid encoded in ``candidate`` if it names a temporary file of ``path``."""
    name = re.escape(Path(path).name)
    match = re.fullmatch(rf"\.{name}\.(\d+)-[^.]+{re.escape(TEMP_SUFFIX)}", candidate)
    return int(match.group(1)) if match else None


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` whose writer process is gone; return them."""
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):  # an unreadable folder: the write itself will say why
        for entry in os.scandir(path.parent):
            pid = temp_owner(path, entry.name)
            if pid is None or pid == os.getpid() or process_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):  # another writer removed it first
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OverflowError:  # not a pid this OS can have
        return False
    return True
