"""finetune: learning, determinism, exact resume, atomic checkpoints, distillation, bad input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import binarize.train as train_module
from binarize.schedule import Schedule
from binarize.train import History, evaluate, finetune, load_checkpoint
from operators.errors import TrainingError

from .helpers import TWO_STAGES, make_bnn, tiny_float

Pair = tuple[Tensor, Tensor]
FAST = {"batch_size": 32, "lr": 1e-2, "progress": False}


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def scramble(model: nn.Module) -> None:
    """Change every weight, so that what a test reads back must come from a checkpoint."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def batches(*pairs: Pair) -> DataLoader:
    """A DataLoader yielding exactly the given (x, y) batches, in order."""
    return DataLoader(list(pairs), batch_size=None)


@dataclass
class Interrupted(Exception):
    step: int


@dataclass
class InterruptingSchedule(Schedule):
    """Raises at a given global step, like a run killed in the middle of an epoch."""

    stop_at: int = -1

    def on_step(self, model: nn.Module, step: int) -> None:
        if step == self.stop_at:
            raise Interrupted(step)
        super().on_step(model, step)


def test_labels_only_training_lowers_the_loss_and_records_history(toy_data) -> None:
    train, val = toy_data
    bnn = make_bnn(distill=None)
    history = finetune(bnn, train, val, epochs=4, **FAST)
    assert isinstance(history, History) and len(history) == 4
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["stage"] == ["activations", "activations", "weights", "weights"]
    assert history["lam"][1] == history["lam"][3] == 1024.0
    # linear decay to 0, per step: lr of the last step of epoch e is lr * (1 - (8e - 1) / 32)
    assert history["lr"] == pytest.approx([1e-2 * (1 - (8 * e - 1) / 32) for e in (1, 2, 3, 4)])
    assert set(history.last) >= {"val_loss", "val_accuracy", "train_accuracy", "seconds"}
    metrics = evaluate(bnn, val)
    assert metrics["accuracy"] == pytest.approx(history["val_accuracy"][-1])


def test_same_seed_same_weights(toy_data) -> None:
    train, _ = toy_data
    first, second = make_bnn(), make_bnn()
    finetune(first, train, epochs=2, seed=3, **FAST)
    finetune(second, train, epochs=2, seed=3, **FAST)
    assert_same_weights(first, second)
    third = make_bnn()
    finetune(third, train, epochs=2, seed=4, **FAST)
    assert not torch.equal(first.student[0].weight, third.student[0].weight)


def test_resume_mid_run_gives_the_uninterrupted_weights(toy_data, tmp_path: Path) -> None:
    train, val = toy_data
    reference = make_bnn()
    finetune(reference, train, val, epochs=3, checkpoint_dir=tmp_path / "a", **FAST)

    interrupted = make_bnn()
    interrupted.schedule = InterruptingSchedule(
        stages=interrupted.schedule.stages, progressive=interrupted.schedule.progressive,
        stop_at=13,  # in the middle of epoch 2 (8 steps per epoch)
    )
    with pytest.raises(Interrupted):
        finetune(interrupted, train, val, epochs=3, checkpoint_dir=tmp_path / "b", **FAST)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1

    resumed = make_bnn()  # same teacher (it is not checkpointed), student overwritten
    scramble(resumed.student)
    history = finetune(resumed, train, val, epochs=3, checkpoint_dir=tmp_path / "b", **FAST)
    assert_same_weights(reference, resumed)
    assert [r["epoch"] for r in history.records] == [1, 2, 3]
    assert resumed.schedule.step == reference.schedule.step == 23

    again = make_bnn()
    scramble(again.student)
    finished = finetune(again, train, val, epochs=3, checkpoint_dir=tmp_path / "b", **FAST)
    assert_same_weights(reference, again)
    assert finished.records == history.records


def test_a_crash_while_writing_keeps_the_previous_checkpoint(
    toy_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, _ = toy_data
    real_save = torch.save
    calls = []

    def save_then_die(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(TrainingError, match=r"disk full.*previous checkpoint is left"):
        finetune(make_bnn(), train, epochs=3, checkpoint_dir=tmp_path, **FAST)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 8
    monkeypatch.undo()
    history = finetune(make_bnn(), train, epochs=3, checkpoint_dir=tmp_path, **FAST)
    assert len(history) == 3


def test_the_teacher_is_used_frozen_when_distilling(toy_data) -> None:
    train, _ = toy_data
    bnn = make_bnn(distill="distributional")
    calls = []
    bnn.teacher.register_forward_hook(lambda module, args, out: calls.append(module.training))
    teacher_before = {k: v.clone() for k, v in bnn.teacher.state_dict().items()}
    finetune(bnn, train, epochs=1, **FAST)
    assert calls == [False] * 8  # once per step, in eval mode
    for key, value in bnn.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert all(p.grad is None for p in bnn.teacher.parameters())
    calls.clear()
    finetune(bnn, train, epochs=1, distill=None, **FAST)
    assert calls == []


def test_plain_float_model_trains_without_schedule(toy_data) -> None:
    train, val = toy_data
    torch.manual_seed(0)
    model = tiny_float()
    history = finetune(model, train, val, epochs=2, optimizer="adamw", lr_schedule="cosine", **FAST)
    assert history["stage"] == ["-", "-"] and history["lam"] == [None, None]
    assert history["lr"][-1] < 1e-4


def test_schedule_override_and_stage_weight_decay(toy_data) -> None:
    train, _ = toy_data
    bnn = make_bnn()
    one_stage = {"stages": [{"name": "binary", "fraction": 1.0, "weight_decay": 0.5}]}
    history = finetune(bnn, train, epochs=1, schedule=one_stage, **FAST)
    assert history["stage"] == ["binary"]
    assert bnn.student[3].binarize_weights
    assert TWO_STAGES["stages"][0]["name"] == bnn.schedule.stages[0].name  # bnn's untouched


# ------------------------------------------------------------------------------ bad input
def test_wrong_input_shape_is_a_training_error(toy_data) -> None:
    (x, y), _ = toy_data
    loader = batches((x[:8], y[:8]), (x[8:16, :, :6], y[8:16]))
    message = r"batch 1 of epoch 1: inputs have shape \(8, 1, 6, 8\)"
    with pytest.raises(TrainingError, match=message):
        finetune(make_bnn(), loader, epochs=1, progress=False)
    with pytest.raises(TrainingError, match="model failed on inputs of shape"):
        finetune(make_bnn(), (torch.zeros(4, 3, 8, 8), torch.zeros(4).long()), epochs=1,
                 progress=False)


def test_labels_out_of_range_are_a_training_error(toy_data) -> None:
    (x, y), _ = toy_data
    bad = y[:8].clone()
    bad[3] = 4
    with pytest.raises(TrainingError, match=r"labels must lie in \[0, 3\].*from 0 to 4"):
        finetune(make_bnn(distill=None), batches((x[:8], bad)), epochs=1, progress=False)
    with pytest.raises(TrainingError, match="targets must be \\[N\\]"):
        finetune(make_bnn(), batches((x[:8], y[:8, None])), epochs=1, progress=False)
    with pytest.raises(TrainingError, match="8 inputs but 7 targets"):
        finetune(make_bnn(), batches((x[:8], y[:7])), epochs=1, progress=False)
    with pytest.raises(TrainingError, match="pairs"):
        finetune(make_bnn(), batches((x[:8], y[:8], y[:8])), epochs=1, progress=False)


def test_a_nan_loss_stops_and_keeps_the_last_checkpoint(toy_data, tmp_path: Path) -> None:
    train, _ = toy_data
    calls = []

    def poisoned(output: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        calls.append(1)
        loss = nn.functional.cross_entropy(output, targets)
        return loss * float("nan") if len(calls) == 11 else loss

    bnn = make_bnn()
    message = r"loss is nan at batch 2 of epoch 2.*last.pt\) is intact"
    with pytest.raises(TrainingError, match=message):
        finetune(bnn, train, epochs=2, loss=poisoned, checkpoint_dir=tmp_path, **FAST)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_unwritable_checkpoint_folder_fails_before_training(toy_data, tmp_path: Path) -> None:
    train, _ = toy_data
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match=r"checkpoint_dir .* is not writable"):
        finetune(make_bnn(), train, epochs=1, checkpoint_dir=blocker / "sub", progress=False)


def test_bad_arguments_are_training_errors(toy_data, tmp_path: Path) -> None:
    train, _ = toy_data
    for options, message in [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"epochs": 1, "optimizer": "sgd"}, "optimizer 'sgd' is unknown"),
        ({"epochs": 1, "lr_schedule": "step"}, "lr_schedule 'step' is unknown"),
        ({"epochs": 1, "metric": "f1"}, "metric 'f1' is unknown"),
    ]:
        with pytest.raises(TrainingError, match=message):
            finetune(make_bnn(), train, progress=False, **options)
    with pytest.raises(TrainingError, match="pair of tensors"):
        finetune(make_bnn(), [train[0]], epochs=1, progress=False)
    finetune(make_bnn(), train, epochs=1, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(TrainingError, match="different run"):
        finetune(make_bnn(), train, epochs=2, checkpoint_dir=tmp_path, **FAST)


def test_recipe_distill_options_reach_the_loss(toy_data, monkeypatch: pytest.MonkeyPatch) -> None:
    train, _ = toy_data
    seen = []
    real = train_module.make_loss

    def spy(kind, teacher=None, **options):
        seen.append((kind, options))
        return real(kind, teacher, **options)

    monkeypatch.setattr(train_module, "make_loss", spy)
    bnn = make_bnn(distill="kd")
    bnn.recipe.distill_options = {"temperature": 2.0, "label_weight": 1.0}
    finetune(bnn, train, epochs=1, **FAST)
    finetune(bnn, train, epochs=1, distill_options={"temperature": 8.0}, **FAST)
    assert seen == [
        ("kd", {"temperature": 2.0, "label_weight": 1.0}),
        ("kd", {"temperature": 8.0, "label_weight": 1.0}),
    ]
    with pytest.raises(TrainingError, match="distill_options"):
        finetune(bnn, train, epochs=1, distill_options={"tau": 2.0}, **FAST)



class Pairs(Dataset):
    """A map-style Dataset of (input, label) pairs, not a TensorDataset."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> Pair:
        return self.x[index], self.y[index]


def test_a_dataset_trains_exactly_like_the_same_tensors(toy_data) -> None:
    train, _ = toy_data
    from_tensors, from_dataset = make_bnn(distill=None), make_bnn(distill=None)
    finetune(from_tensors, train, epochs=2, **FAST)
    finetune(from_dataset, Pairs(*train), epochs=2, **FAST)
    assert_same_weights(from_tensors, from_dataset)


def test_a_users_loader_history_columns_and_evaluate(toy_data) -> None:
    train, _ = toy_data
    bnn = make_bnn(distill=None)
    loader = DataLoader(Pairs(*train), batch_size=32, shuffle=True)
    history = finetune(bnn, loader, epochs=1, progress=False)
    assert len(history) == 1 and history.last["val_loss"] is None
    with pytest.raises(KeyError, match="columns"):
        history["val_top5"]
    metrics = evaluate(bnn, train, metric=None)
    assert set(metrics) == {"loss"} and metrics["loss"] > 0
