"""What `finetune` accepts as data, and the checks every batch passes before it trains.

`Data` is a DataLoader, a Dataset of (x, y) pairs, or an (x, y) tensor pair; all become
DataLoaders, sharded by a DistributedSampler under DDP. A batch with the wrong shape, dtype
or labels out of range stops training with a `TrainingError` naming the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    TensorDataset,
)

from operators.errors import TrainingError

Data = DataLoader | Dataset | tuple[Tensor, Tensor]


def as_loader(
    data: Data, batch_size: int, *, shuffle: bool, seed: int, rank: int, world: int
) -> DataLoader:
    """A DataLoader over `data`, sharded across `world` processes.

    Tensors and Datasets are batched with a DistributedSampler (one replica when not
    distributed), whose order depends only on (seed, epoch): resuming replays it exactly.
    A TensorDataset is indexed a whole batch at a time (no per-sample collation).
    """
    if isinstance(data, DataLoader):
        if world == 1:
            return data
        return shard_loader(data, rank, world, seed)
    if isinstance(data, tuple | list):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TrainingError(
                "training data given as a sequence must be a pair of tensors (inputs, "
                f"targets); got {len(data)} items of types {[type(t).__name__ for t in data]}"
            )
        x, y = data
        if len(x) != len(y):
            raise TrainingError(
                f"inputs and targets differ in length: {len(x)} inputs, {len(y)} targets"
            )
        data = TensorDataset(x, y)
    if not isinstance(data, Dataset):
        raise TrainingError(
            f"cannot train on a {type(data).__name__}; pass a DataLoader, a Dataset or a "
            "pair of tensors (inputs, targets)"
        )
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
    if isinstance(data, TensorDataset):
        return DataLoader(data, sampler=BatchSampler(sampler, batch_size, False), batch_size=None)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


def shard_loader(loader: DataLoader, rank: int, world: int, seed: int) -> DataLoader:
    """The same DataLoader with a DistributedSampler (shuffled if the original was)."""
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(
        loader.dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    sampler = loader.sampler
    if isinstance(sampler, BatchSampler):
        sampler = sampler.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def loader_length(loader: DataLoader) -> int:
    try:
        n = len(loader)
    except TypeError as exc:
        raise TrainingError(
            "the training DataLoader has no length (an IterableDataset?); finetune needs "
            "the number of steps per epoch to place the schedule and the lr decay"
        ) from exc
    require_batches(loader, "the training data", "give it at least one sample")
    return n


def require_batches(loader: DataLoader, what: str, hint: str) -> None:
    """Raise TrainingError when `loader` has a length and it is 0 (it would yield nothing).

    A loader without a length is checked while it is read (`finetune` counts the samples).
    """
    try:
        empty = len(loader) == 0
    except TypeError:
        return
    if empty:
        raise TrainingError(f"{what} yields no batch; {hint}")


def unpack_batch(batch: Any, where: str) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise TrainingError(
            f"{where}: the loader must yield (inputs, targets) pairs, got a "
            f"{type(batch).__name__}; wrap the data so each batch is a pair"
        )
    x, y = batch
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TrainingError(
            f"{where}: inputs and targets must be tensors, got {type(x).__name__} and "
            f"{type(y).__name__}"
        )
    return x, y


def check_inputs(x: Tensor, y: Tensor, sample_shape: tuple[int, ...], where: str) -> None:
    if not x.is_floating_point():
        raise TrainingError(f"{where}: inputs must be floating point, got {x.dtype}")
    if tuple(x.shape[1:]) != sample_shape:
        raise TrainingError(
            f"{where}: inputs have shape {tuple(x.shape)}, but earlier batches had samples of "
            f"shape {sample_shape}; every sample must have the same shape"
        )
    if len(x) != len(y):
        raise TrainingError(f"{where}: {len(x)} inputs but {len(y)} targets")


def check_targets(output: Tensor | Sequence[Tensor], y: Tensor, where: str) -> None:
    """Class-index targets must be [N] integers in [0, C) for a [N, C] output; float targets
    must have the output's shape. A list/tuple output (several heads, e.g. every stack of a
    stacked hourglass) is checked head by head against the same targets."""
    if isinstance(output, list | tuple):
        for head in output:
            check_targets(head, y, where)
        return
    if y.is_floating_point():
        if y.shape != output.shape:
            raise TrainingError(
                f"{where}: float targets of shape {tuple(y.shape)} do not match the output "
                f"{tuple(output.shape)}; use integer class indices or targets shaped like it"
            )
        return
    if output.dim() != 2 or y.dim() != 1:
        raise TrainingError(
            f"{where}: class-index targets must be [N] for an [N, C] output, got targets "
            f"{tuple(y.shape)} and output {tuple(output.shape)}"
        )
    classes = output.shape[1]
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise TrainingError(
            f"{where}: labels must lie in [0, {classes - 1}] (the model has {classes} "
            f"outputs), got labels from {low} to {high}"
        )

