"""Checkpoints of `finetune`: atomic writes, validated reads, and every RNG state.

A checkpoint is a `torch.save` dict of tensors and plain data (read back with
`weights_only=True`, so loading runs no pickled code), tagged with a format name and version.
It is written to a temp file in the same folder, fsynced, renamed over the old one with
`os.replace` and the folder fsynced: a crash at any point leaves the previous checkpoint or
the new one, never a torn file, and the next write removes the temp files of killed runs.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from operators.errors import TrainingError
from runtime.atomic import write_atomic

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "binarize.checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """Write `state` with torch.save atomically (`runtime.atomic.write_atomic`): a temp file
    `.last.pt.<pid>-<random>.tmp`, fsync, os.replace, fsync of the folder.

    A crash at any point leaves either the previous file or the new one, never a torn one;
    the temp files of killed writers (their pid is gone) are removed by the next write.
    Raises TrainingError (the temp file removed) when the write fails.
    """
    path = Path(path)
    try:
        write_atomic(path, lambda handle: torch.save(dict(state), handle))
    except Exception as exc:
        raise TrainingError(
            f"cannot write checkpoint {path}: {exc}; the previous checkpoint is left as it "
            "was. Free disk space or choose a writable checkpoint_dir"
        ) from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `finetune` (tensors and plain data only, no pickle code)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(
            f"cannot read checkpoint {path}: {exc}; delete it or pass resume=False"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a binarize checkpoint; pass resume=False")
    if state.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(
            f"checkpoint {path} has version {state.get('version')}, this library reads "
            f"version {CHECKPOINT_VERSION}; pass resume=False"
        )
    return state


def checkpoint_path(folder: str | Path | None, is_main: bool) -> Path | None:
    """`folder/last.pt`, after checking (rank 0) that the folder can be written."""
    if folder is None:
        return None
    folder = Path(folder)
    if is_main:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # an unnamed file where the OS allows it (O_TMPFILE): a kill leaves nothing behind
            with tempfile.TemporaryFile(dir=folder) as probe:
                probe.write(b"")
        except OSError as exc:
            raise TrainingError(
                f"checkpoint_dir {folder} is not writable ({exc}); choose another folder or "
                "pass checkpoint_dir=None"
            ) from exc
    return folder / CHECKPOINT_NAME


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain data."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32),
                      "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate needs tuples; a checkpoint may hand lists back."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value

