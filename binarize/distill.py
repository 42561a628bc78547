"""Losses for fine-tuning a binary student, with or without its real-valued teacher.

Every loss here is a `TrainingLoss`: called as `loss(student_output, inputs, targets)`, so the
training loop treats a label loss and a distillation loss alike. `make_loss(kind, teacher)`
picks one by the recipe's `distill` field:

- None: cross-entropy on the labels.
- "distributional": mean_i sum_c -softmax(z_T)_ic log softmax(z_S)_ic, temperature 1, no
  label term (ReActNet, Liu et al. 2020, arXiv 2003.03488).
- "kd": tau^2 KL(softmax(z_T/tau) ‖ softmax(z_S/tau)) + w CE(z_S, y) (Hinton et al. 2015,
  arXiv 1503.02531).
- "mse": mean (y_S - y_T)^2 over every element, for dense outputs such as heatmaps (Bulat
  et al. 2019, arXiv 1904.05868).

The teacher runs frozen: eval mode, `requires_grad=False`, under `torch.no_grad()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.errors import TrainingError

KINDS = ("distributional", "kd", "mse")


class TrainingLoss(Protocol):
    """What `binarize.finetune` calls: `loss(student_output, inputs, targets) -> scalar`."""

    def __call__(self, output: Tensor, inputs: Tensor, targets: Tensor) -> Tensor: ...


def distributional_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """ReActNet's distributional loss (Liu et al. 2020, eq. 8), temperature 1.

    L = (1/N) sum_i sum_c -softmax(z_T)_ic * log softmax(z_S)_ic, logits of shape [N, C].
    It is the cross-entropy of the student against the teacher's soft labels; it equals
    KL(p_T ‖ p_S) plus the teacher's entropy, which does not depend on the student.
    """
    _check_same_shape(student_logits, teacher_logits, "distributional")
    teacher_prob = F.softmax(teacher_logits, dim=1)
    return -(teacher_prob * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 4.0,
    label_weight: float = 0.0,
) -> Tensor:
    """Hinton et al. 2015 knowledge distillation with temperature tau.

    L = tau^2 (1/N) sum_i KL(softmax(z_T,i / tau) ‖ softmax(z_S,i / tau))
        + label_weight * (1/N) sum_i -log softmax(z_S)_i,y_i
    The tau^2 factor keeps the soft term's gradient scale independent of tau. The label term
    needs `labels` (integer class indices, shape [N]) when `label_weight` > 0.
    """
    _check_same_shape(student_logits, teacher_logits, "kd")
    if temperature <= 0:
        raise TrainingError(f"kd temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()
    loss = temperature**2 * soft
    if label_weight:
        if labels is None:
            raise TrainingError("kd with label_weight > 0 needs the labels; pass targets")
        loss = loss + label_weight * F.cross_entropy(student_logits, labels)
    return loss


def mse_loss(student_output: Tensor, teacher_output: Tensor) -> Tensor:
    """Mean squared error over every element: (1/M) sum (y_S - y_T)^2 (dense outputs)."""
    _check_same_shape(student_output, teacher_output, "mse")
    return F.mse_loss(student_output, teacher_output)


class LabelLoss:
    """Cross-entropy of the output against integer labels (no teacher)."""

    def __call__(self, output: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(output, targets)


class DistillationLoss:
    """A distillation loss whose teacher is run inside it, frozen.

    The teacher is put in eval mode with its parameters' `requires_grad` off, and is run under
    `torch.no_grad()` on the same inputs as the student. It is a plain object, not an
    `nn.Module`, so `student.train()` or an optimizer never reaches the teacher.
    """

    def __init__(
        self,
        teacher: nn.Module,
        kind: str = "distributional",
        *,
        temperature: float = 4.0,
        label_weight: float = 0.0,
    ) -> None:
        if kind not in KINDS:
            raise TrainingError(f"distillation kind {kind!r} is unknown; use one of {KINDS}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.kind = kind
        self.temperature = temperature
        self.label_weight = label_weight

    def teacher_output(self, inputs: Tensor) -> Tensor:
        """The teacher's output on `inputs`, without gradient, in eval mode."""
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            return self.teacher(inputs)

    def __call__(self, output: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        teacher = self.teacher_output(inputs)
        if self.kind == "distributional":
            return distributional_loss(output, teacher)
        if self.kind == "kd":
            return kd_loss(
                output,
                teacher,
                targets,
                temperature=self.temperature,
                label_weight=self.label_weight,
            )
        return mse_loss(output, teacher)


def make_loss(
    kind: str | None,
    teacher: nn.Module | None = None,
    *,
    temperature: float = 4.0,
    label_weight: float = 0.0,
) -> TrainingLoss:
    """The loss for a recipe's `distill` field: `LabelLoss` for None, else a distillation.

    Raises TrainingError when a distillation is asked for without a teacher.
    """
    if kind is None:
        return LabelLoss()
    if teacher is None:
        raise TrainingError(
            f"distill={kind!r} needs a teacher, but the model has none; convert with a "
            "teacher (binarize.convert keeps a frozen copy of the float model) or pass "
            "distill=None to train on the labels"
        )
    return DistillationLoss(
        teacher, kind, temperature=temperature, label_weight=label_weight
    )


@dataclass(frozen=True)
class Distillation:
    """The loss a recipe fine-tunes with (checked when built; `binarize.finetune` reads it).

    Attributes:
        kind: None (cross-entropy on the labels), "distributional", "kd" or "mse".
        options: keyword arguments of `make_loss` for that kind (`temperature`,
            `label_weight`).
    """

    kind: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise TrainingError(f"Distillation.kind {self.kind!r} is not one of {[None, *KINDS]}")
        accepted = [
            name
            for name, parameter in inspect.signature(make_loss).parameters.items()
            if parameter.kind is parameter.KEYWORD_ONLY
        ]
        if not isinstance(self.options, Mapping) or set(self.options) - set(accepted):
            raise TrainingError(
                f"Distillation.options {self.options!r} do not fit make_loss, which accepts "
                f"{accepted}"
            )
        object.__setattr__(self, "options", dict(self.options))


def _check_same_shape(student: Tensor, teacher: Tensor, kind: str) -> None:
    if student.shape != teacher.shape:
        raise TrainingError(
            f"{kind} distillation needs student and teacher outputs of the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}; the teacher must be the "
            "float model the student was converted from"
        )
