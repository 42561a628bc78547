"""finetune's progress output: a tqdm bar only on a terminal, one line per epoch in a log."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from binarize import train
from binarize.train import finetune


def _run(epochs: int = 2) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    finetune(model, (x, y), epochs=epochs, batch_size=16, progress=True)


def test_a_log_gets_one_line_per_epoch_and_no_carriage_returns(capfd) -> None:
    _run(epochs=3)
    out, err = capfd.readouterr()
    assert "\r" not in out + err  # no bar redraws in a file or CI log
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 3 and all("epoch=" in line for line in lines), lines


def test_a_terminal_gets_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    monkeypatch.setattr(train.sys, "stderr", stream)
    _run(epochs=1)
    assert "\r" in stream.getvalue() and "epoch 1/1" in stream.getvalue()
