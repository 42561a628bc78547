"""IDX reading and the dataset lookup, on small files written here (no dataset needed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from binarize.data import fashion_mnist, find_fashion_mnist, read_idx, synthetic_images
from operators.errors import TrainingError


def write_idx(path: Path, array: np.ndarray, *, type_code: int = 0x08) -> Path:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


def test_read_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", array)), array)
    raw = tmp_path / "b"
    raw.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes([7, 8, 9]))
    assert read_idx(raw).tolist() == [7, 8, 9]


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad_magic = tmp_path / "m"
    bad_magic.write_bytes(bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(TrainingError, match="not an IDX file"):
        read_idx(bad_magic)
    with pytest.raises(TrainingError, match="element type 0x0d"):
        read_idx(write_idx(tmp_path / "f.gz", np.zeros(3), type_code=0x0D))
    truncated = tmp_path / "t"
    truncated.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">2I", 2, 2) + bytes(3))
    with pytest.raises(TrainingError, match=r"\(4 bytes of data\) but the file holds 3"):
        read_idx(truncated)
    with pytest.raises(TrainingError, match="cannot read"):
        read_idx(tmp_path / "missing.gz")


def test_missing_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="make data"):
        find_fashion_mnist(tmp_path)
    with pytest.raises(TrainingError, match="split 'val' is unknown"):
        fashion_mnist("val", root=tmp_path)


def test_wrong_sizes_are_reported(tmp_path: Path) -> None:
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(TrainingError, match=r"expected \(10000, 28, 28\)"):
        fashion_mnist("test", root=tmp_path)


def test_synthetic_images_are_deterministic_and_balanced_enough() -> None:
    x, y = synthetic_images(200, channels=2, size=6, classes=5, seed=3)
    assert x.shape == (200, 2, 6, 6) and y.shape == (200,)
    assert set(y.tolist()) == set(range(5))
    x2, y2 = synthetic_images(200, channels=2, size=6, classes=5, seed=3)
    assert np.array_equal(x.numpy(), x2.numpy()) and np.array_equal(y.numpy(), y2.numpy())
