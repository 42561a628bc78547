"""One training run of the ablation, as a task a worker process runs alone on one torch thread.

A task is a float teacher (trained once per dataset and seed, cached under the cache folder
by its configuration) or a binary row: ``binarize.convert`` the cached teacher with the row's
recipe, ``binarize.finetune`` it, evaluate the PyTorch student on the test images,
``binarize.pack`` it and run the packed file with ``runtime``. Every result is written as a
JSON file named by a hash of everything that determines it, so an interrupted ablation
resumes where it stopped and a finished one re-renders its report in seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from experiments import write_json
from torch import Tensor, nn

import binarize
import runtime
from binarize.checkpoint import save_checkpoint
from binarize.data import fashion_mnist, mnist, synthetic_images
from binarize.models import resnet_small
from binarize.recipes import Recipe
from binarize.train import evaluate, finetune

CACHE_VERSION = 1  # bump when a change of this file changes what a cached result means
LOADERS = {"fashion-mnist": fashion_mnist, "mnist": mnist}


@dataclass(frozen=True)
class Config:
    """What every run of one ablation shares (one mode of ablation.py)."""

    n_train: int
    n_val: int
    n_test: int
    float_epochs: int
    epochs: int
    long_factor: int
    width: int = 16
    batch_size: int = 128
    lr: float = 1e-2
    float_lr: float = 3e-3

    def epochs_of(self, budget: str) -> int:
        """Binary fine-tuning epochs of a budget: "short" or "long"."""
        return self.epochs * (self.long_factor if budget == "long" else 1)


@dataclass(frozen=True)
class Task:
    """One run: the float teacher (``recipe`` None) or a binary row."""

    dataset: str
    seed: int
    config: Config
    cache: Path
    name: str = "float"
    recipe: Recipe | None = None
    budget: str = "short"
    device: str = "cpu"

    @property
    def epochs(self) -> int:
        if self.recipe is None:
            return self.config.float_epochs
        return self.config.epochs_of(self.budget)

    def key(self, with_recipe: bool = True) -> str:
        """Hash of everything the result depends on: the recipe's full repr, less the words
        that do not change training (its description and source)."""
        parts = [CACHE_VERSION, self.dataset, self.seed, repr(self.config)]
        if with_recipe:
            recipe = self.recipe and dataclasses.replace(self.recipe, description="", source="")
            parts += [repr(recipe), self.budget]
        return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]

    @property
    def result_path(self) -> Path:
        return self.cache / "runs" / f"{self.key()}.json"

    @property
    def teacher_path(self) -> Path:
        return self.cache / "float" / f"{self.dataset}-s{self.seed}-{self.key(False)}.pt"


@functools.lru_cache(maxsize=2)
def _whole(dataset: str) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The whole train and test sets, read once per process (MNIST's file takes seconds)."""
    return LOADERS[dataset]("train"), LOADERS[dataset]("test")


def _draw(data: tuple[Tensor, Tensor], n: int, seed: int) -> tuple[Tensor, Tensor]:
    """`n` samples without replacement, by a generator seeded `seed` (binarize.data's rule)."""
    keep = torch.randperm(len(data[1]), generator=torch.Generator().manual_seed(seed))[:n]
    return data[0][keep], data[1][keep]


def load_data(
    dataset: str, n_train: int, n_val: int, n_test: int, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, val, test): `n_train + n_val` training images drawn with `seed`, the first
    `n_val` held out for validation curves; `n_test` test images (the same for every seed).
    "synthetic" is `binarize.data.synthetic_images` at 28x28, for the smoke test."""
    if dataset == "synthetic":
        x, y = synthetic_images(n_train + n_val + n_test, size=28, classes=10, noise=0.5, seed=99)
        train_x, train_y = x[n_test:], y[n_test:]
        test = (x[:n_test], y[:n_test])
    else:
        whole_train, whole_test = _whole(dataset)
        train_x, train_y = _draw(whole_train, n_train + n_val, seed)
        test = _draw(whole_test, n_test, 0)
    val = (train_x[:n_val], train_y[:n_val])
    train = (train_x[n_val:], train_y[n_val:])
    return train, val, test


def run(task: Task) -> dict[str, Any]:
    """Run `task` (or read its cached result) and return its result record."""
    if task.result_path.exists():
        return json.loads(task.result_path.read_text())
    started = time.perf_counter()
    c = task.config
    train, val, test = load_data(task.dataset, c.n_train, c.n_val, c.n_test, task.seed)
    teacher, history = float_teacher(task, train, val)
    if task.recipe is None:
        record = _record(task, teacher, history, test)
    else:
        example = (test[0][:2],)
        bnn = binarize.convert(teacher, recipe=task.recipe, example_inputs=example)
        history = finetune(
            bnn, train, val, epochs=task.epochs, lr=c.lr, batch_size=c.batch_size,
            seed=task.seed, device=task.device, progress=False,
        ).records
        record = _record(task, bnn, history, test)
        record.update(_deploy(bnn.cpu(), test, example))
    record["wall_seconds"] = time.perf_counter() - started
    record["other_seconds"] = record["wall_seconds"] - record["train_seconds"]
    write_json(task.result_path, record)
    return record


def float_teacher(
    task: Task, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor]
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The float ResNet of this dataset and seed and its training history: trained once,
    then read from the cache (the weights as a checkpoint, the history as JSON beside it)."""
    c = task.config
    torch.manual_seed(task.seed)
    model = resnet_small(num_classes=10, width=c.width)
    path = task.teacher_path
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model, json.loads(path.with_suffix(".json").read_text())
    history = finetune(
        model, train, val, epochs=c.float_epochs, lr=c.float_lr, batch_size=c.batch_size,
        lr_schedule="cosine", seed=task.seed, device=task.device, progress=False,
    ).records
    write_json(path.with_suffix(".json"), history)
    save_checkpoint(model.cpu().state_dict(), path)
    return model.cpu(), history


def _record(
    task: Task, model: nn.Module, history: list[dict[str, Any]], test: tuple[Tensor, Tensor]
) -> dict[str, Any]:
    """The run's numbers: test accuracy of the PyTorch model, per-epoch curves and times."""
    accuracy = evaluate(model, test, device=task.device)["accuracy"]
    return {
        "dataset": task.dataset,
        "seed": task.seed,
        "name": task.name,
        "budget": task.budget,
        "epochs": task.epochs,
        "test_accuracy": accuracy,
        "seconds_per_epoch": sum(r["seconds"] for r in history) / max(len(history), 1),
        "train_seconds": sum(r["seconds"] for r in history),
        "val_accuracy": [r["val_accuracy"] for r in history],
        "train_loss": [r["train_loss"] for r in history],
        "stages": [r["stage"] for r in history],
    }


def _deploy(
    bnn: nn.Module, test: tuple[Tensor, Tensor], example: tuple[Tensor, ...]
) -> dict[str, Any]:
    """Pack the fine-tuned student and run the file with the runtime on the test images."""
    packed = binarize.pack(bnn, example)
    model = runtime.load(packed, threads=1)
    logits = model.predict(test[0].numpy())
    with torch.no_grad():
        student = bnn.eval()(test[0]).argmax(1).numpy()
    predicted = logits.argmax(1)
    return {
        "runtime_accuracy": float((predicted == test[1].numpy()).mean()),
        "runtime_agreement": float((predicted == student).mean()),
        "packed_bytes": len(packed),
    }
