"""Two gloo processes (torch.multiprocessing spawn) train one model under DDP."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from binarize.data import synthetic_images
from binarize.train import finetune

from .helpers import make_bnn


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        x, y = synthetic_images(256, size=8, classes=4, noise=0.8, seed=1)
        bnn = make_bnn(distill=None, seed=rank)  # different inits: DDP broadcasts rank 0's
        history = finetune(
            bnn, (x, y), (x[:64], y[:64]), epochs=3, lr=1e-2, batch_size=16,
            checkpoint_dir=f"{folder}/checkpoints", progress=False,
        )
        torch.save(
            {"model": bnn.state_dict(), "loss": history["train_loss"]}, f"{folder}/rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_keeps_replicas_identical_and_learns(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0["model"].items():
        assert torch.equal(value, rank1["model"][key]), key
    assert rank0["loss"] == rank1["loss"]  # all-reduced epoch means
    assert rank0["loss"][-1] < rank0["loss"][0]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]
