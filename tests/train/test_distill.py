"""Distillation losses equal their formulas, computed here with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from binarize.distill import (
    DistillationLoss,
    LabelLoss,
    distributional_loss,
    kd_loss,
    make_loss,
    mse_loss,
)
from operators.errors import TrainingError

logit_batches = st.tuples(st.integers(1, 5), st.integers(2, 6), st.integers(0, 10_000))


def logits(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = 3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    teacher = 3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    return student, teacher, labels


def softmax_row(row: list[float], tau: float = 1.0) -> list[float]:
    top = max(row)
    e = [math.exp((v - top) / tau) for v in row]
    return [v / sum(e) for v in e]


@settings(max_examples=25, deadline=None)
@given(logit_batches)
def test_distributional_loss_is_mean_of_soft_cross_entropy(shape: tuple[int, int, int]) -> None:
    student, teacher, _ = logits(*shape)
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_t, p_s = softmax_row(t_row), softmax_row(s_row)
        expected += sum(-pt * math.log(ps) for pt, ps in zip(p_t, p_s))
    expected /= len(student)
    assert distributional_loss(student, teacher).item() == pytest.approx(expected, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(logit_batches, st.floats(0.5, 8.0), st.floats(0.0, 2.0))
def test_kd_loss_is_tau_squared_kl_plus_weighted_cross_entropy(
    shape: tuple[int, int, int], tau: float, weight: float
) -> None:
    student, teacher, labels = logits(*shape)
    kl = ce = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p_t, p_s = softmax_row(t_row, tau), softmax_row(s_row, tau)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        ce += -math.log(softmax_row(s_row)[y])
    expected = tau**2 * kl / len(student) + weight * ce / len(student)
    got = kd_loss(student, teacher, labels, temperature=tau, label_weight=weight).item()
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_kd_of_identical_logits_is_zero_and_distributional_is_the_entropy() -> None:
    z = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    assert kd_loss(z, z, temperature=2.0).item() == pytest.approx(0.0, abs=1e-12)
    p = softmax_row([1.0, 2.0, 3.0])
    entropy = -sum(v * math.log(v) for v in p)
    assert distributional_loss(z, z).item() == pytest.approx(entropy, rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(0, 1000))
def test_mse_is_mean_over_every_element(n: int, c: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, n, c, 3, 3, generator=g, dtype=torch.float64)
    values = [(x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist())]
    assert mse_loss(a, b).item() == pytest.approx(sum(values) / len(values), rel=1e-12)


def test_teacher_runs_frozen_in_eval_mode_without_gradient() -> None:
    teacher = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))
    teacher.train()
    loss_fn = DistillationLoss(teacher, "distributional")
    x = torch.randn(8, 4)
    before = teacher[2].running_mean.clone()
    teacher.train()  # someone flips it back: the loss must put it in eval again
    student_out = torch.randn(8, 3, requires_grad=True)
    loss = loss_fn(student_out, x, torch.zeros(8, dtype=torch.long))
    loss.backward()
    assert not teacher.training
    assert torch.equal(teacher[2].running_mean, before)  # eval mode: no running-stat update
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        expected = distributional_loss(student_out, teacher(x))
    assert torch.equal(loss.detach(), expected)


def test_make_loss_picks_by_kind() -> None:
    teacher = nn.Linear(4, 3)
    assert isinstance(make_loss(None), LabelLoss)
    for kind in ("distributional", "kd", "mse"):
        loss_fn = make_loss(kind, teacher)
        assert isinstance(loss_fn, DistillationLoss) and loss_fn.kind == kind
    with pytest.raises(TrainingError, match="needs a teacher"):
        make_loss("kd", None)
    with pytest.raises(TrainingError, match="unknown"):
        make_loss("hinton", teacher)


def test_shape_mismatch_and_missing_labels_are_errors() -> None:
    with pytest.raises(TrainingError, match="same shape"):
        distributional_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TrainingError, match="needs the labels"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), label_weight=0.5)
