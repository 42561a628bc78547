"""Misuse of pack and finetune: each is a library error that says what was wrong and what to do.

Never a bare RuntimeError from torch.fx, a NotImplementedError from the meta device or an
OSError from a write: `ConversionError` for pack, `TrainingError` for finetune.
"""

from __future__ import annotations

import errno
import inspect
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import binarize
from binarize import ConversionError, TrainingError
from binarize.options import options_type, whole
from binarize.train import _Options

X = torch.randn(2, 1, 8, 8)


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


@pytest.fixture(scope="module")
def bnn() -> binarize.BinaryModel:
    return binarize.convert(small_net(), recipe="xnor", example_inputs=(X,))


# ------------------------------------------------------------------------------------ pack
@pytest.mark.parametrize(
    ("example", "message"),
    [
        (torch.randn(2, 3, 8, 8), r"fails on the example input of shape \(2, 3, 8, 8\).*channels"),
        (torch.randn(2, 64), r"fails on the example input of shape \(2, 64\)"),
        (torch.randn(2, 1, 8, 8, device="meta"), r"meta device and holds no data.*torch.randn"),
    ],
)
def test_a_bad_example_input_is_a_conversion_error(
    bnn: binarize.BinaryModel, example: torch.Tensor, message: str
) -> None:
    with pytest.raises(ConversionError, match=message):
        binarize.pack(bnn, (example,))


def test_half_precision_or_meta_weights_are_conversion_errors() -> None:
    half = binarize.convert(small_net(), recipe="xnor", example_inputs=(X,)).half()
    with pytest.raises(ConversionError, match=r"float16.*bnn\.float\(\)"):
        binarize.pack(half, (X,))
    with pytest.raises(ConversionError, match=r"float16.*bnn\.float\(\)"):
        binarize.pack(half, (X.half(),))  # not the example's dtype error: the weights' first
    meta = binarize.convert(small_net(), recipe="xnor", example_inputs=(X,)).to("meta")
    with pytest.raises(ConversionError, match=r"meta device and holds no weights.*to_empty"):
        binarize.pack(meta, (X,))


def test_unwritable_paths_are_conversion_errors(bnn: binarize.BinaryModel, tmp_path) -> None:
    with pytest.raises(ConversionError, match=r"folder .*missing' does not exist.*makedirs"):
        binarize.pack(bnn, (X,), path=tmp_path / "missing" / "model.bnn")
    with pytest.raises(ConversionError, match=r"is a folder; pass the file.*model\.bnn"):
        binarize.pack(bnn, (X,), path=tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(ConversionError, match=r"'.*file' is a file, not a folder"):
        binarize.pack(bnn, (X,), path=blocker / "model.bnn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing else written


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can create files in: chmod for a user, the immutable flag for root
    (root ignores permission bits); skipped where root cannot set that flag."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", folder], capture_output=True).returncode:
        pytest.skip("running as root, and chattr +i (CAP_LINUX_IMMUTABLE) is not available")
    try:
        yield folder
    finally:
        subprocess.run([chattr, "-i", folder], check=True)


def test_a_read_only_folder_is_a_conversion_error(
    bnn: binarize.BinaryModel, read_only_folder: Path
) -> None:
    with pytest.raises(OSError):  # the folder really is read-only for this process
        (read_only_folder / "probe").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"folder .*read-only' is not writable"):
        binarize.pack(bnn, (X,), path=read_only_folder / "model.bnn")


def test_a_read_only_checkpoint_folder_is_a_training_error(read_only_folder: Path) -> None:
    with pytest.raises(TrainingError, match=r"checkpoint_dir .*read-only is not writable"):
        binarize.finetune(small_net(), DATA, epochs=1, checkpoint_dir=read_only_folder,
                          progress=False)
    assert list(read_only_folder.iterdir()) == []


def test_a_failed_write_is_a_conversion_error_and_keeps_the_old_file(
    bnn: binarize.BinaryModel, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.bnn"
    old = binarize.pack(bnn, (X,), path=path)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ConversionError, match=r"No space left.*previous file there is left"):
        binarize.pack(bnn, (X,), path=path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.bnn"]  # the temp file removed


# -------------------------------------------------------------------------------- finetune
DATA = (torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": float("nan")}, r"got lr=nan; lr must be a finite number > 0"),
        ({"lr": -1}, r"got lr=-1; lr must be a finite number > 0"),
        ({"lr": True}, r"got lr=True; lr must be a finite number"),
        ({"epochs": 1.5}, r"got epochs=1.5; epochs must be >= 1 and a whole number"),
        ({"batch_size": 0}, r"got batch_size=0; batch_size must be >= 1"),
        ({"weight_decay": float("inf")}, r"weight_decay must be a finite number >= 0"),
        ({"seed": 0.5}, r"seed must be a whole number"),
        ({"distill": "hinton"}, r"distill 'hinton' is unknown; use one of"),
        ({"schedule": ["stage"]}, r"schedule must be a Schedule, a dict or None"),
        ({"loss": "mse"}, r"loss must be a callable"),
        ({"checkpoint_dir": 7}, r"checkpoint_dir must be a folder path"),
        ({"resume": "yes"}, r"resume must be True or False"),
        ({"device": "gpu"}, r"got device='gpu';.*use 'cpu', 'cuda'"),
        ({"device": "meta"}, r"meta device holds no data"),
    ],
)
def test_bad_finetune_options_are_training_errors(options: dict, message: str) -> None:
    model = small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingError, match=message):
        binarize.finetune(model, DATA, **{"epochs": 1, "progress": False, **options})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untrained


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_training_error() -> None:
    with pytest.raises(TrainingError, match=r"CUDA is not available.*device='cpu'"):
        binarize.finetune(small_net(), DATA, epochs=1, device="cuda", progress=False)


def test_a_meta_device_model_is_a_training_error() -> None:
    with pytest.raises(TrainingError, match=r"0\.weight is on the meta device.*to_empty"):
        binarize.finetune(small_net().to("meta"), DATA, epochs=1, progress=False)


class Nothing(IterableDataset):
    """An iterable dataset (no length) that yields nothing."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(())


def test_empty_validation_data_is_a_training_error() -> None:
    empty = (DATA[0][:0], DATA[1][:0])
    with pytest.raises(TrainingError, match=r"val_data yields no batch.*val_data=None"):
        binarize.finetune(small_net(), DATA, empty, epochs=1, progress=False)
    with pytest.raises(TrainingError, match=r"val_data yields no sample"):  # no length
        binarize.finetune(small_net(), DATA, DataLoader(Nothing(), batch_size=None), epochs=1,
                          progress=False)
    with pytest.raises(TrainingError, match=r"the data yields no sample"):
        binarize.train.evaluate(small_net(), empty)
    history = binarize.finetune(small_net(), DATA, None, epochs=1, progress=False)
    assert history.last["val_loss"] is None and history.last["val_accuracy"] is None


def test_every_finetune_option_is_declared_once_and_checked() -> None:
    """The options type is built from finetune's signature; an unchecked option cannot exist."""
    keyword_only = [
        p.name for p in inspect.signature(binarize.finetune).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert [f for f in _Options.__dataclass_fields__] == keyword_only

    def train(*, epochs: int = 1, lr: float = 1e-3) -> None:
        """A function with an option that has no check."""

    with pytest.raises(TypeError, match=r"options without a check \['lr'\]"):
        options_type(train, {"epochs": whole(1, "passes")})
    with pytest.raises(TypeError, match=r"checks without an option \['seed'\]"):
        options_type(train, {"epochs": whole(1, "passes"), "lr": whole(1, "x"),
                             "seed": whole(0, "x")})
