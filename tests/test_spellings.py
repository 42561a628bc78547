"""Every spelling of passes/spellings.py converts, fine-tunes a step, packs and runs in the
runtime with the student's outputs; the README's list of spellings is the generated one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from passes import spellings
from tests.deploy_check import deploy_and_compare

ROOT = Path(__file__).resolve().parents[1]

ADDS = {
    "operator": lambda a, b: a + b,
    "method": lambda a, b: a.add(b),
    "torch.add": lambda a, b: torch.add(a, b),
    "inplace": lambda a, b: a.add_(b),
    "iadd": lambda a, b: _iadd(a, b),
}


def _iadd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a += b
    return a


MAXPOOLS = {
    "module": lambda: nn.MaxPool2d(2),
    "function": lambda: (lambda x: F.max_pool2d(x, kernel_size=2)),
}
AVGPOOLS = {
    "module": lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    "function": lambda: (lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)),
}
UPSAMPLES = {
    "module": lambda: nn.Upsample(scale_factor=2),  # stores the float 2.0
    "function": lambda: (lambda x: F.interpolate(x, scale_factor=2, mode="nearest")),
    "size": lambda: (lambda x: F.interpolate(x, size=(8, 8))),
}
GLOBAL_POOLS = {
    "adaptive_module": lambda x: nn.functional.adaptive_avg_pool2d(x, 1).flatten(1),
    "adaptive_function": lambda x: torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1),
    "mean_method": lambda x: x.mean((2, 3)),
    "mean_dim": lambda x: x.mean(dim=(2, 3)),
    "torch_mean": lambda x: torch.mean(x, (2, 3)),
    "mean_keepdim_view": lambda x: x.mean(dim=(-2, -1), keepdim=True).view(x.size(0), -1),
}
RELUS = {
    "module": lambda: nn.ReLU(inplace=True),
    "F.relu": lambda: F.relu,
    "torch.relu": lambda: torch.relu,
    "method": lambda: (lambda x: x.relu()),
}
FLATTENS = {
    "module": lambda: nn.Flatten(),
    "torch.flatten": lambda: (lambda x: torch.flatten(x, 1)),
    "view": lambda: (lambda x: x.view(x.size(0), -1)),
    "reshape": lambda: (lambda x: x.reshape(x.shape[0], -1)),
    "method": lambda: (lambda x: x.flatten(1)),
}


class Spelled(nn.Module):
    """A small net whose every structural step uses the spelling it is given."""

    def __init__(self, add: str, maxpool: str, avgpool: str, upsample: str, relu: str,
                 flatten: str, pool: str) -> None:  # fmt: skip
        super().__init__()
        self.add, self.pool = ADDS[add], GLOBAL_POOLS[pool]
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = RELUS[relu]()
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.down = MAXPOOLS[maxpool]()
        self.smooth = AVGPOOLS[avgpool]()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.up = UPSAMPLES[upsample]()
        self.head = nn.Conv2d(32, 8, 1)
        self.flat = FLATTENS[flatten]()
        self.fc = nn.Linear(8 * 8 * 8 + 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = self.add(self.bn1(self.conv1(x)), x)
        low = self.smooth(self.down(x))
        low = self.add(self.bn2(self.conv2(low)), low)
        merged = torch.cat([x, self.up(low)], dim=1)
        features = self.head(merged)
        return self.fc(torch.cat([self.flat(features), self.pool(features)], 1))


CASES = [
    dict(add="operator", maxpool="module", avgpool="module", upsample="module", relu="module",
         flatten="module", pool="adaptive_module"),
    dict(add="method", maxpool="function", avgpool="function", upsample="function",
         relu="F.relu", flatten="torch.flatten", pool="adaptive_function"),
    dict(add="torch.add", maxpool="module", avgpool="function", upsample="size",
         relu="torch.relu", flatten="view", pool="mean_method"),
    dict(add="inplace", maxpool="function", avgpool="module", upsample="module",
         relu="method", flatten="reshape", pool="mean_dim"),
    dict(add="iadd", maxpool="module", avgpool="module", upsample="function",
         relu="module", flatten="method", pool="torch_mean"),
    dict(add="operator", maxpool="function", avgpool="function", upsample="size",
         relu="F.relu", flatten="view", pool="mean_keepdim_view"),
]  # fmt: skip


def test_every_spelling_is_in_some_case() -> None:
    tables = {"add": ADDS, "maxpool": MAXPOOLS, "avgpool": AVGPOOLS, "upsample": UPSAMPLES,
              "relu": RELUS, "flatten": FLATTENS, "pool": GLOBAL_POOLS}  # fmt: skip
    for key, table in tables.items():
        assert {case[key] for case in CASES} == set(table), key


@pytest.mark.parametrize("recipe", ["reactnet", "xnor"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_spelling_converts_trains_packs_and_matches(case: int, recipe: str) -> None:
    torch.manual_seed(case)
    deploy_and_compare(Spelled(**CASES[case]), torch.randn(64, 3, 8, 8), recipe)


def test_readme_lists_the_generated_spellings() -> None:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- spellings: generated.*?-->\n(.*?)\n<!-- end", text, re.S)
    assert match, "README.md lost its generated spellings table markers"
    assert match.group(1) == spellings.supported_table(), (
        "README's supported-spellings table is out of date: paste "
        "`python -c 'from passes.spellings import supported_table; print(supported_table())'`"
    )
