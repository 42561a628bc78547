"""One training run of the pose example, as a task a worker process runs on one torch thread.

A task is a float stacked hourglass of 1, 2 or 3 stacks (trained once per seed, cached by its
configuration) or a binary row: ``binarize.convert`` that teacher with a recipe,
``binarize.finetune`` it with :class:`metrics.StackedHeatmapLoss` (every stack supervised,
heatmap distillation from the float teacher unless the row says not), measure PCKh of the
PyTorch student, ``binarize.pack`` it, and measure PCKh and batch-1 speed of the packed file
in ``runtime`` against the float hourglass in PyTorch. Results are JSON files named by a
hash of everything that determines them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import data
import metrics
import numpy as np
import torch
from experiments import write_json
from torch import Tensor, nn

import binarize
import runtime
from binarize import recipes
from binarize.checkpoint import save_checkpoint
from binarize.models import hourglass
from binarize.train import finetune

CACHE_VERSION = 3  # bump when a change here changes what a cached result means
EXAMPLES = 6  # test images whose predicted skeletons are kept for the figure


@dataclass(frozen=True)
class Config:
    """What every run of one mode shares."""

    n_train: int
    n_val: int
    n_test: int
    float_epochs: int
    epochs: int
    width: int = 32
    depth: int = 3
    batch_size: int = 16
    # binary rows: chosen by validation heatmap MSE after 3 epochs (reactnet 2-stack, quick
    # data, seed 0): lr 5e-4 0.0347, 1e-3 0.0325, 2e-3 0.0303, 5e-3 0.0259, 1e-2 0.0269
    lr: float = 5e-3
    float_lr: float = 2e-3


@dataclass(frozen=True)
class Task:
    """One run: the float hourglass of `stacks` stacks (`recipe` None) or a binary row."""

    seed: int
    stacks: int
    config: Config
    cache: Path
    name: str = "float"
    recipe: str | None = None
    distill: bool = True
    device: str = "cpu"

    @property
    def epochs(self) -> int:
        return self.config.float_epochs if self.recipe is None else self.config.epochs

    def key(self, binary: bool = True) -> str:
        """Hash of everything the result depends on (a recipe's full repr included)."""
        parts = [CACHE_VERSION, data.VERSION, self.seed, self.stacks, repr(self.config)]
        if binary and self.recipe is not None:
            parts += [repr(recipes.get(self.recipe)), self.distill]
        return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]

    @property
    def result_path(self) -> Path:
        return self.cache / "runs" / f"{self.key()}.json"

    @property
    def teacher_path(self) -> Path:
        return self.cache / "float" / f"hg{self.stacks}-s{self.seed}-{self.key(False)}.pt"


def splits(config: Config, cache: Path) -> tuple[dict[str, Tensor], ...]:
    """(train, val, test) of the synthetic data (the same for every seed and row)."""
    folder = cache / "data"
    return (data.split("train", config.n_train, folder), data.split("val", config.n_val, folder),
            data.split("test", config.n_test, folder))


def heatmap_mse(output: list[Tensor], targets: Tensor) -> Tensor:
    """The validation curve: mean squared error of the last stack's heatmaps to the targets
    (the same measure for every row, distilled or not)."""
    return torch.mean((output[-1] - targets) ** 2)


def run(task: Task) -> dict[str, Any]:
    """Run `task` (or read its cached result) and return its result record."""
    if task.result_path.exists():
        return json.loads(task.result_path.read_text())
    started = time.perf_counter()
    train, val, test = splits(task.config, task.cache)
    teacher, history = float_teacher(task, train, val)
    example = (test["images"][:2],)
    if task.recipe is None:
        record = _record(task, teacher, history, test)
        teacher = teacher.cpu()
        record["torch_ms"] = _latency(lambda x: teacher(torch.from_numpy(x)), example)
    else:
        c = task.config
        bnn = binarize.convert(teacher, recipe=task.recipe, example_inputs=example)
        # finetune moves the model, not a loss's teacher: put it on the training device
        loss = metrics.StackedHeatmapLoss(bnn.teacher.to(task.device) if task.distill else None)
        history = finetune(
            bnn, (train["images"], train["heatmaps"]), (val["images"], val["heatmaps"]),
            epochs=task.epochs, lr=c.lr, batch_size=c.batch_size, loss=loss,
            metric=heatmap_mse, seed=task.seed, device=task.device, progress=False,
        ).records
        record = _record(task, bnn, history, test)
        record.update(_deploy(bnn.cpu(), teacher.cpu(), test, example, record["pck"]))
    record["wall_seconds"] = time.perf_counter() - started
    record["other_seconds"] = record["wall_seconds"] - record["train_seconds"]
    write_json(task.result_path, record)
    return record


def float_teacher(
    task: Task, train: dict[str, Tensor], val: dict[str, Tensor]
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The float hourglass of this seed and stack count and its history: trained once with
    every stack supervised, then read from the cache."""
    c = task.config
    torch.manual_seed(task.seed)
    model = hourglass(task.stacks, len(data.JOINTS), c.depth, c.width, block="hierarchical",
                      outputs="list")
    path = task.teacher_path
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), json.loads(path.with_suffix(".json").read_text())
    history = finetune(
        model, (train["images"], train["heatmaps"]), (val["images"], val["heatmaps"]),
        epochs=c.float_epochs, lr=c.float_lr, batch_size=c.batch_size,
        loss=metrics.StackedHeatmapLoss(), metric=heatmap_mse, lr_schedule="cosine",
        seed=task.seed, device=task.device, progress=False,
    ).records
    write_json(path.with_suffix(".json"), history)
    save_checkpoint(model.cpu().state_dict(), path)
    return model.cpu().eval(), history


def predict_torch(model: nn.Module, images: Tensor, device: str = "cpu") -> np.ndarray:
    """The last stack's heatmaps [N, J, 16, 16] of `model` in eval mode."""
    model = model.to(device).eval()
    with torch.no_grad():
        chunks = [model(images[i:i + 128].to(device))[-1].cpu() for i in range(0, len(images), 128)]
    return torch.cat(chunks).numpy()


def _pck(heatmaps: np.ndarray, test: dict[str, Tensor]) -> tuple[float, list[float], np.ndarray]:
    points = metrics.decode(heatmaps, data.STRIDE)
    overall, per_joint = metrics.pck(points, test["joints"].numpy(), test["visible"].numpy(),
                                     test["head_size"].numpy())
    return overall, per_joint.tolist(), points


def _record(task: Task, model: nn.Module, history: list[dict[str, Any]],
            test: dict[str, Tensor]) -> dict[str, Any]:
    """PCKh of the PyTorch model on the test images, the curves and the times."""
    overall, per_joint, points = _pck(predict_torch(model, test["images"], task.device), test)
    return {
        "seed": task.seed,
        "stacks": task.stacks,
        "name": task.name,
        "recipe": task.recipe,
        "distill": task.distill,
        "epochs": task.epochs,
        "pck": overall,
        "pck_per_joint": per_joint,
        "examples": points[:EXAMPLES].tolist(),
        "seconds_per_epoch": sum(r["seconds"] for r in history) / max(len(history), 1),
        "train_seconds": sum(r["seconds"] for r in history),
        "val_heatmap_mse": [r["val_heatmap_mse"] for r in history],
    }


def _latency(predict: Any, example: tuple[Tensor, ...], repeats: int = 20) -> float:
    """Minimum over `repeats` of one batch-1 call, in milliseconds (after a warm-up call)."""
    one = example[0][:1].numpy()
    with torch.no_grad():
        predict(one)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            predict(one)
            times.append(time.perf_counter() - started)
    return 1e3 * min(times)


def _deploy(bnn: nn.Module, teacher: nn.Module, test: dict[str, Tensor],
            example: tuple[Tensor, ...], torch_pck: float) -> dict[str, Any]:
    """Pack the student, run the file on the test images: its PCKh and batch-1 speed against
    the float hourglass of the same stacks in PyTorch (both on one thread)."""
    packed = binarize.pack(bnn, example)
    model = runtime.load(packed, threads=1)
    outputs = model.predict(test["images"].numpy())
    last = outputs[-1] if isinstance(outputs, tuple) else outputs  # one stack: one array
    runtime_pck, runtime_per_joint, _ = _pck(last, test)
    runtime_ms = _latency(model.predict, example)
    torch_ms = _latency(lambda x: teacher.eval()(torch.from_numpy(x)), example)
    return {
        "runtime_pck": runtime_pck,
        "runtime_pck_per_joint": runtime_per_joint,
        "runtime_minus_torch_points": 100 * (runtime_pck - torch_pck),
        "runtime_ms": runtime_ms,
        "float_torch_ms": torch_ms,
        "packed_bytes": len(packed),
    }
