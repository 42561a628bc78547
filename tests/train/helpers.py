"""Small models shared by the training tests (no dataset or converter needed)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch import nn

from binarize.schedule import Schedule
from operators import BinaryConv2d


def tiny_float(classes: int = 4) -> nn.Sequential:
    """A 1x8x8 -> classes float CNN."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


class FakeBinaryModel(nn.Module):
    """What binarize.convert returns, reduced to what finetune uses: a student whose middle
    conv is binary, a frozen teacher kept out of parameters(), a recipe and a schedule."""

    def __init__(self, teacher: nn.Module, binarizer: str, schedule: dict, distill: str | None):
        super().__init__()
        student = copy.deepcopy(teacher)
        student[3] = BinaryConv2d.from_float(student[3], input_binarizer=binarizer)
        student[5] = nn.PReLU(8)
        self.student = student
        self.__dict__["teacher"] = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.recipe = SimpleNamespace(distill=distill, schedule=schedule)
        self.schedule = Schedule.from_config(schedule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


TWO_STAGES = {
    "stages": [
        {"name": "activations", "activations": True, "weights": False, "fraction": 0.5,
         "weight_decay": 1e-5},
        {"name": "weights", "activations": True, "weights": True, "fraction": 0.5,
         "weight_decay": 0.0},
    ],
    "progressive": {"lam_min": 1.0, "lam_max": 1024.0, "ramp": "geometric"},
}


def make_bnn(
    binarizer: str = "progressive", distill: str | None = "distributional", seed: int = 0
) -> FakeBinaryModel:
    torch.manual_seed(seed)
    return FakeBinaryModel(tiny_float(), binarizer, TWO_STAGES, distill)
