"""finetune and evaluate with models that return a list of heads (intermediate supervision)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from binarize.train import evaluate, finetune
from operators.errors import TrainingError


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 2, 3, padding=1)
        self.second = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        first = self.first(x)
        return [first, self.second(first)]


def every_head(output: list[Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
    return sum(torch.mean((head - targets) ** 2) for head in output)


def test_list_outputs_train_against_targets_shaped_like_each_head() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 6, 6), torch.randn(16, 2, 6, 6)
    model = TwoHeads()
    before = every_head(model(x), x, y).item()
    history = finetune(model, (x, y), (x, y), epochs=3, lr=1e-2, batch_size=8, loss=every_head,
                       metric=None, progress=False)
    assert history.last["val_loss"] < before
    assert evaluate(model, (x, y), loss=every_head, metric=None)["loss"] < before


def test_a_head_unlike_the_targets_is_named() -> None:
    x, y = torch.randn(4, 1, 6, 6), torch.randn(4, 2, 5, 5)
    message = r"float targets of shape \(4, 2, 5, 5\) do not match the output \(4, 2, 6, 6\)"
    with pytest.raises(TrainingError, match=message):
        finetune(TwoHeads(), (x, y), epochs=1, loss=every_head, metric=None, progress=False)
