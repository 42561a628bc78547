"""`finetune`: the training loop for binary networks (and their float teachers).

    history = binarize.finetune(bnn, (x_train, y_train), (x_val, y_val), epochs=8, lr=1e-3)

What one call does, in order:
- builds the loss: the recipe's `distill` ("distributional", "kd", "mse") against
  `bnn.teacher` run frozen, or cross-entropy on the labels (see `binarize.distill`);
- Adam or AdamW over two param groups (conv weights, decayed; the rest, not decayed), the
  learning rate decayed per step to 0, linearly (ReActNet) or along a cosine;
- drives `bnn.schedule` (stages, progressive lambda, per-stage weight decay) every step, and
  leaves the model in its export state (`Schedule.finalize`: all binary, hard sign);
- writes an atomic checkpoint after every epoch and resumes from it;
- trains with DistributedDataParallel when started by `torchrun` (WORLD_SIZE > 1) or inside
  an initialised `torch.distributed` process group.

Everything that makes it stop (a bad batch, a non-finite loss, an unwritable checkpoint
folder) raises `binarize.TrainingError` and leaves the last good checkpoint as it was.

What it relies on from `binarize.convert`'s `BinaryModel`: `bnn.schedule` is
`Schedule.from_config(bnn.recipe.schedule)`; `bnn.recipe.distill` / `distill_options` pick the
loss; `bnn.teacher` is held outside `parameters()` and `state_dict()`, so the optimizer, DDP
and the checkpoints see the student only. Any other `nn.Module` trains too, on the labels and
without a schedule unless one is passed. The math of the schedule (stages, lambda ramp) and of
the losses is in docs/OPERATORS.md.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
)
from tqdm import tqdm

from binarize import options as opt
from binarize.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from binarize.distill import KINDS, LabelLoss, TrainingLoss, make_loss
from binarize.loaders import (
    Data,
    as_loader,
    check_inputs,
    check_targets,
    loader_length,
    require_batches,
    set_epoch,
    unpack_batch,
)
from binarize.schedule import Schedule, param_groups
from operators import binarizers, binary_layers
from operators.errors import TrainingError

__all__ = ["History", "evaluate", "finetune", "load_checkpoint", "save_checkpoint"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
_LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": lambda t: 1.0 - t,
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "constant": lambda t: 1.0,
}
Metric = Callable[[Tensor, Tensor], Tensor]


@dataclass
class History:
    """Per-epoch records of a `finetune` run.

    Each record has: epoch (1-based), stage, lam (None without a progressive ramp), lr (of the
    epoch's last step), train_loss, train_<metric>, val_loss, val_<metric> (None without
    validation data), seconds. `history["val_accuracy"]` is that column as a list.
    """

    records: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: str) -> list[Any]:
        if self.records and key not in self.records[0]:
            raise KeyError(f"History has no column {key!r}; columns: {list(self.records[0])}")
        return [record[key] for record in self.records]

    @property
    def last(self) -> dict[str, Any]:
        """The record of the last epoch."""
        if not self.records:
            raise TrainingError("History is empty: no epoch was trained")
        return self.records[-1]


def finetune(
    bnn: nn.Module,
    train_data: Data,
    val_data: Data | None = None,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr_schedule: str = "linear",
    weight_decay: float | None = None,
    schedule: Schedule | Mapping[str, Any] | None = None,
    distill: str | None = "recipe",
    distill_options: Mapping[str, Any] | None = None,
    loss: TrainingLoss | None = None,
    metric: str | Metric | None = "accuracy",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> History:
    """Fine-tune `bnn` (a `binarize.BinaryModel`, or any `nn.Module`) and return its History.

    Args:
        bnn: the model. Its `schedule`, `teacher` and `recipe.distill` are used when present,
            so a plain float `nn.Module` trains with cross-entropy and no schedule.
        train_data, val_data: a `DataLoader` yielding (inputs, targets) batches, a `Dataset`
            of (input, target) pairs, or a pair of tensors (inputs [N, ...], targets [N]).
            Datasets and tensors are batched here (`batch_size`, shuffled with `seed` for
            training); a DataLoader is used as given (under DDP it is rebuilt with a
            DistributedSampler). Targets are class indices for classification.
        epochs: number of passes over `train_data`.
        lr: peak learning rate; decays per step to 0 along `lr_schedule` ("linear",
            "cosine" or "constant").
        optimizer: "adam" (ReActNet) or "adamw".
        weight_decay: decay of the conv weights for the whole run; None follows the
            schedule's per-stage values (ReActNet: 1e-5 in stage 1, 0 in stage 2), or 0.
            Other parameters (BN, biases, thresholds, slopes, classifier) are never decayed.
        schedule: overrides `bnn.schedule` (a Schedule, copied, or a config dict); without
            it `bnn.schedule` itself is driven, so it shows the run's progress afterwards.
        distill: "distributional", "kd", "mse" or None; "recipe" takes `bnn.recipe.distill`
            (labels only when the model has no teacher).
        distill_options: keyword arguments of `binarize.distill.make_loss` (kd's
            `temperature`, `label_weight`), over the recipe's `distill_options`.
        loss: a callable `loss(output, inputs, targets)`; overrides `distill`.
        metric: "accuracy" (top-1), None, or a callable `metric(output, targets)` returning
            the batch mean; reported for training and validation.
        checkpoint_dir: folder of `last.pt`, written atomically after every epoch; with
            `resume`, an existing `last.pt` there is loaded and training continues from it.
        seed: seeds torch, numpy and random at the start (shuffling, dropout): on CPU two
            runs with the same seed give the same weights.
        device: "cpu", "cuda" or a torch.device; under torchrun each process uses
            cuda:LOCAL_RANK.
        progress: show a tqdm bar with the loss and metric (rank 0 only).

    Returns the History of every epoch, earlier runs' epochs included when resuming.
    Raises TrainingError on a bad option (each is checked before anything runs: a
    non-integer or < 1 `epochs`/`batch_size`, an `lr` that is not finite and > 0, an unknown
    name, CUDA asked for but absent), a model on the meta device, bad batches, an empty
    `val_data`, a NaN/Inf loss or an unwritable checkpoint folder.
    """
    options = _Options.of(locals())
    _check_model(bnn)
    run = _Run(bnn, options)
    try:
        return run.fit(train_data, val_data)
    finally:
        run.close()


def evaluate(
    model: nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    loss: TrainingLoss | None = None,
    metric: str | Metric | None = "accuracy",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Mean loss (cross-entropy by default) and metric of `model` over `data`, in eval mode.

    Returns {"loss": ..., "<metric>": ...} (no metric key when `metric` is None).
    """
    device = torch.device(device)
    model = model.to(device)
    loader = as_loader(data, batch_size, shuffle=False, seed=0, rank=0, world=1)
    name, metric_fn = _resolve_metric(metric)
    totals = _evaluate(model, loader, loss or LabelLoss(), metric_fn, device, "the data")
    return _averages(totals, name)


def _check_model(bnn: nn.Module) -> None:
    if not isinstance(bnn, nn.Module):
        raise TrainingError(f"finetune trains an nn.Module, got a {type(bnn).__name__}")
    for name, tensor in [*bnn.named_parameters(), *bnn.named_buffers()]:
        if tensor.device.type == "meta":
            raise TrainingError(
                f"the model's {name} is on the meta device and holds no data; materialize "
                "it first (model.to_empty(device='cpu'), then load_state_dict or an init)"
            )


def _check_metric(name: str, value: Any) -> str | None:
    if value is None or value == "accuracy" or callable(value):
        return None
    return f"{name} {value!r} is unknown; use 'accuracy', None or a callable"


_Options = opt.options_type(
    finetune,
    {
        "epochs": opt.whole(1, "the number of passes over train_data"),
        "lr": opt.real(0, "the peak learning rate, e.g. 1e-3", strict=True),
        "batch_size": opt.whole(1, "the samples per step when finetune batches the data"),
        "optimizer": opt.one_of(_OPTIMIZERS),
        "lr_schedule": opt.one_of(_LR_SCHEDULES),
        "weight_decay": opt.optional(
            opt.real(0, "the conv weights' decay, or None for the schedule's", strict=False)
        ),
        "schedule": opt.instance((Schedule, Mapping, type(None)), "a Schedule, a dict or None"),
        "distill": opt.one_of(("recipe", None, *KINDS)),
        "distill_options": opt.instance((Mapping, type(None)), "a dict of make_loss options"),
        "loss": opt.optional_callable("a callable loss(output, inputs, targets)"),
        "metric": _check_metric,
        "checkpoint_dir": opt.instance(
            (str, os.PathLike, type(None)), "a folder path (str or pathlib.Path) or None"
        ),
        "resume": opt.flag,
        "seed": opt.whole(None, "the seed of torch, numpy and random"),
        "device": opt.device,
        "progress": opt.flag,
    },
)
"""`finetune`'s keyword-only arguments, checked; `_Run` reads them (documented there)."""


class _Run:
    """One `finetune` call: the objects it builds and the loop over epochs."""

    def __init__(self, bnn: nn.Module, options: Any) -> None:
        self.bnn = bnn
        self.options = options
        self.device = torch.device(options.device)
        self.rank, self.world, self._owns_group = _init_distributed(self.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        self.metric_name, self.metric_fn = _resolve_metric(options.metric)
        self.schedule = _resolve_schedule(bnn, options.schedule)
        self.loss_fn, self.val_loss_fn = self._losses()
        self.checkpoint = checkpoint_path(options.checkpoint_dir, self.is_main)
        self.step = 0
        self.sample_shape: tuple[int, ...] | None = None

    def _losses(self) -> tuple[TrainingLoss, TrainingLoss]:
        o = self.options
        if o.loss is not None:
            return o.loss, o.loss
        teacher = getattr(self.bnn, "teacher", None)
        kind = o.distill
        options = dict(o.distill_options or {})
        if kind == "recipe":
            recipe = getattr(self.bnn, "recipe", None)
            kind = getattr(recipe, "distill", None) if teacher is not None else None
            options = {**getattr(recipe, "distill_options", {}), **options}
        if teacher is not None:
            teacher.to(self.device)
        try:
            train = make_loss(kind, teacher, **options)
        except TypeError as exc:
            raise TrainingError(
                f"distill_options {sorted(options)} do not fit make_loss: {exc}; the options "
                "are 'temperature' and 'label_weight'"
            ) from exc
        return train, (train if kind == "mse" else LabelLoss())

    def close(self) -> None:
        if self._owns_group:
            dist.destroy_process_group()

    # ------------------------------------------------------------------------------ loop
    def fit(self, train_data: Data, val_data: Data | None) -> History:
        o = self.options
        train_loader = as_loader(
            train_data, o.batch_size, shuffle=True, seed=o.seed, rank=self.rank,
            world=self.world,
        )
        val_loader = None
        if val_data is not None:
            val_loader = as_loader(
                val_data, o.batch_size, shuffle=False, seed=o.seed, rank=self.rank,
                world=self.world,
            )
            require_batches(
                val_loader, "val_data",
                "give it at least one sample, or pass val_data=None to train without validation",
            )
        steps_per_epoch = loader_length(train_loader)
        total_steps = o.epochs * steps_per_epoch
        seed_everything(o.seed)
        self.bnn.to(self.device)
        self.optimizer = self._optimizer()
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_factor(o.lr_schedule, total_steps)
        )
        if self.schedule is not None:
            self.schedule.on_train_begin(self.bnn, total_steps, steps_per_epoch)
        history, start_epoch = History(), 0
        if o.resume and self.checkpoint is not None and self.checkpoint.exists():
            history, start_epoch = self._load(steps_per_epoch)
        model = self._wrap_ddp()
        self.step = start_epoch * steps_per_epoch
        for epoch in range(start_epoch, o.epochs):
            started = time.perf_counter()
            totals, last_lr = self._train_epoch(model, train_loader, epoch)
            if self.schedule is not None:
                self.schedule.on_epoch_end(self.bnn, epoch)
                if epoch == o.epochs - 1:
                    self.schedule.finalize(self.bnn)
            self._sync_buffers()
            record = self._record(epoch, last_lr, totals)
            record.update(self._validate(val_loader))
            record["seconds"] = time.perf_counter() - started
            history.records.append(record)
            self._report(record)
            self._save(history, epoch + 1)
        if self.schedule is not None:  # also when resuming a finished run (no epoch ran)
            self.schedule.finalize(self.bnn)
        return history

    def _train_epoch(
        self, model: nn.Module, loader: DataLoader, epoch: int
    ) -> tuple[Tensor, float]:
        """One pass over `loader`: sums [loss * n, metric * n, n] and the last step's lr."""
        set_epoch(loader, epoch)
        model.train()
        totals = torch.zeros(3, dtype=torch.float64)
        last_lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.options.epochs}{self._stage_label()}",
            # a bar on a terminal only: in a log (CI, a file) the epoch's line of _report says
            # it once instead of a carriage-return flood
            disable=not (self.options.progress and self.is_main and _is_terminal(sys.stderr)),
            leave=True,
            dynamic_ncols=True,
        )
        for index, batch in enumerate(bar):
            where = f"batch {index} of epoch {epoch + 1}"
            x, y = unpack_batch(batch, where)
            if self.sample_shape is None:
                self.sample_shape = tuple(x.shape[1:])
            check_inputs(x, y, self.sample_shape, where)
            last_lr = self.optimizer.param_groups[0]["lr"]
            output, loss = self._train_step(model, x, y, where)
            totals += torch.tensor([loss * len(y), self._metric_sum(output, y), len(y)])
            if index % 20 == 0 or index == len(loader) - 1:
                bar.set_postfix(self._postfix(totals))
        bar.close()
        return totals, last_lr

    def _train_step(
        self, model: nn.Module, x: Tensor, y: Tensor, where: str
    ) -> tuple[Tensor, float]:
        """Schedule, forward, checks, backward, optimizer and lr steps: (output, loss)."""
        if self.schedule is not None:
            self.schedule.on_step(self.bnn, self.step)
            if self.options.weight_decay is None:
                self.schedule.update_optimizer(self.optimizer)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        output = _forward(model, x, where)
        check_targets(output, y, where)
        loss = self.loss_fn(output, x, y)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"the loss is {loss_value} at {where} (step {self.step}, lr "
                f"{self.optimizer.param_groups[0]['lr']:.3g}); the last good checkpoint "
                f"({self.checkpoint or 'none written'}) is intact. Lower lr, check the "
                "inputs for NaN/Inf, or resume from the checkpoint"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1
        return output, loss_value

    def _record(self, epoch: int, last_lr: float, totals: Tensor) -> dict[str, Any]:
        train = _averages(self._all_reduce(totals), self.metric_name)
        record = {
            "epoch": epoch + 1,
            "stage": self.schedule.current_stage.name if self.schedule else "-",
            "lam": self.schedule.lam() if self.schedule else None,
            "lr": last_lr,
            "train_loss": train["loss"],
        }
        if self.metric_name:
            record[f"train_{self.metric_name}"] = train[self.metric_name]
        return record

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.options
        decay = o.weight_decay
        if decay is None:
            decay = 0.0 if self.schedule is None else (self.schedule.weight_decay() or 0.0)
        return _OPTIMIZERS[o.optimizer](param_groups(self.bnn, decay), lr=o.lr)

    def _wrap_ddp(self) -> nn.Module:
        if self.world == 1:
            return self.bnn
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            self.bnn,
            device_ids=device_ids,
            find_unused_parameters=_may_leave_parameters_unused(self.bnn, self.schedule),
        )

    def _sync_buffers(self) -> None:
        """Give every replica rank 0's buffers (BN running statistics).

        DDP broadcasts them at the start of each forward only, so after an epoch each rank
        holds its own last update; validation and checkpoints must see one model.
        """
        if self.world == 1:
            return
        for buffer in self.bnn.buffers():
            dist.broadcast(buffer, src=0)

    def _metric_sum(self, output: Tensor, y: Tensor) -> float:
        if self.metric_fn is None:
            return 0.0
        with torch.no_grad():
            return float(self.metric_fn(output, y)) * len(y)

    def _validate(self, loader: DataLoader | None) -> dict[str, float | None]:
        keys = ["val_loss"] + ([f"val_{self.metric_name}"] if self.metric_name else [])
        if loader is None:
            return dict.fromkeys(keys)
        totals = _evaluate(
            self.bnn, loader, self.val_loss_fn, self.metric_fn, self.device, "val_data"
        )
        averages = _averages(self._all_reduce(totals), self.metric_name)
        return {f"val_{k}": v for k, v in averages.items()}

    def _all_reduce(self, totals: Tensor) -> Tensor:
        if self.world == 1:
            return totals
        reduced = totals.to(self.device)
        dist.all_reduce(reduced)
        return reduced.cpu()

    def _stage_label(self) -> str:
        if self.schedule is None or self.schedule.total_steps is None:
            return ""
        index, _ = self.schedule.locate(self.step)
        return f" [{self.schedule.stages[index].name}]"

    def _postfix(self, totals: Tensor) -> dict[str, str]:
        averages = _averages(totals, self.metric_name)
        return {k: f"{v:.4f}" for k, v in averages.items()}

    def _report(self, record: dict[str, Any]) -> None:
        """One line per epoch (on a terminal below its bar, in a log on its own)."""
        if not (self.options.progress and self.is_main):
            return
        parts = [
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.items()
            if v is not None
        ]
        tqdm.write("  ".join(parts))

    # ------------------------------------------------------------------------ checkpoints
    def _save(self, history: History, epoch: int) -> None:
        if self.checkpoint is None or not self.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "step": self.step,
            "epochs": self.options.epochs,
            "model": self.bnn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule else None,
            "rng": rng_state(),
            "history": history.records,
        }
        save_checkpoint(state, self.checkpoint)

    def _load(self, steps_per_epoch: int) -> tuple[History, int]:
        state = load_checkpoint(self.checkpoint)
        epochs = self.options.epochs
        if state["epochs"] != epochs or state["step"] != state["epoch"] * steps_per_epoch:
            raise TrainingError(
                f"checkpoint {self.checkpoint} belongs to a different run (epochs="
                f"{state['epochs']}, {state['step']} steps after {state['epoch']} epochs; this "
                f"run: epochs={epochs}, {steps_per_epoch} steps per epoch); pass resume=False "
                "or another checkpoint_dir"
            )
        try:
            self.bnn.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise TrainingError(
                f"checkpoint {self.checkpoint} does not fit this model: {exc}; pass "
                "resume=False or another checkpoint_dir"
            ) from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.schedule is not None and state["schedule"] is not None:
            self.schedule.load_state_dict(state["schedule"])
            self.schedule.on_step(self.bnn, state["step"])
        set_rng_state(state["rng"])
        return History(list(state["history"])), int(state["epoch"])


# ---------------------------------------------------------------------------------- helpers
def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_available():
        raise TrainingError(
            f"WORLD_SIZE={world} asks for distributed training but this torch build has no "
            "torch.distributed; run a single process"
        )
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _may_leave_parameters_unused(bnn: nn.Module, schedule: Schedule | None) -> bool:
    """Whether a stage can leave parameters out of the forward, which DDP must be told.

    A disabled binarizer skips its threshold parameters (RSign, DySign); float weights skip
    a learnable weight scale.
    """
    if schedule is None:
        return False
    if any(not stage.activations for stage in schedule.stages) and any(
        next(b.parameters(), None) is not None for b in binarizers(bnn)
    ):
        return True
    return any(not stage.weights for stage in schedule.stages) and any(
        layer.weight_scale == "learnable" for layer in binary_layers(bnn)
    )


def _resolve_schedule(bnn: nn.Module, schedule: Schedule | Mapping | None) -> Schedule | None:
    if schedule is None:
        return getattr(bnn, "schedule", None)
    return Schedule.from_config(schedule)


def _resolve_metric(metric: str | Metric | None) -> tuple[str | None, Metric | None]:
    if metric is None:
        return None, None
    if metric == "accuracy":
        return "accuracy", _accuracy
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    raise TrainingError(f"metric {metric!r} is unknown; use 'accuracy', None or a callable")


def _accuracy(output: Tensor, targets: Tensor) -> Tensor:
    """Top-1 accuracy: mean of argmax_c output[i, c] == targets[i]."""
    return (output.argmax(dim=1) == targets).float().mean()


def _lr_factor(name: str, total_steps: int) -> Callable[[int], float]:
    shape = _LR_SCHEDULES[name]
    return lambda step: shape(min(step / total_steps, 1.0))


def _forward(model: nn.Module, x: Tensor, where: str) -> Tensor:
    try:
        return model(x)
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(
            f"{where}: the model failed on inputs of shape {tuple(x.shape)}: {exc}"
        ) from exc


def _evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: TrainingLoss,
    metric_fn: Metric | None,
    device: torch.device,
    what: str,
) -> Tensor:
    """Sums over `loader` of [loss * n, metric * n, n], in eval mode without gradients.

    Raises TrainingError when `loader` (`what`, for the message) yields no sample: a mean
    over nothing would read as a perfect loss of 0.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for index, batch in enumerate(loader):
            x, y = unpack_batch(batch, f"validation batch {index}")
            x, y = x.to(device), y.to(device)
            output = _forward(model, x, f"validation batch {index}")
            check_targets(output, y, f"validation batch {index}")
            n = len(y)
            metric = float(metric_fn(output, y)) if metric_fn is not None else 0.0
            totals += torch.tensor([float(loss_fn(output, x, y)) * n, metric * n, n])
    model.train(was_training)
    if totals[2] == 0:
        raise TrainingError(
            f"{what} yields no sample, so there is nothing to average; give it at least one "
            "batch"
        )
    return totals


def _averages(totals: Tensor, metric_name: str | None) -> dict[str, float]:
    count = max(float(totals[2]), 1.0)
    averages = {"loss": float(totals[0]) / count}
    if metric_name:
        averages[metric_name] = float(totals[1]) / count
    return averages


def _is_terminal(stream: Any) -> bool:
    """Whether `stream` (tqdm writes its bar to stderr) is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
