"""binarize.summary's packed size is the size of the file binarize.pack writes.

The user's path: summary while the network is still in its training state, then finalize the
schedule and pack. Each network is first run in training mode on a random batch so its
BatchNorm statistics are not the defaults (they decide what folds where).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from binarize.convert import convert
from binarize.models import SmallCNN, resnet18, resnet_small
from binarize.pack import pack
from binarize.summary import summary

RECIPES = ("xnor", "bireal", "reactnet", "dybnn", "bulat")
NETWORKS = {
    "SmallCNN": (lambda: SmallCNN(in_channels=1, width=8), (2, 1, 12, 12)),
    "resnet_small": (lambda: resnet_small(in_channels=1, width=16), (2, 1, 16, 16)),
    "resnet18": (lambda: resnet18(num_classes=10), (2, 3, 32, 32)),
}
CASES = [(r, n) for r in RECIPES for n in ("SmallCNN", "resnet_small")] + [
    ("bireal", "resnet18"),  # Bi-Real-18, the network the benchmarks pack (~30 s here)
]


def _converted(recipe: str, network: str) -> tuple[nn.Module, torch.Tensor]:
    build, shape = NETWORKS[network]
    torch.manual_seed(0)
    x = torch.randn(*shape)
    bnn = convert(build(), recipe, x, export_check="off")
    with torch.no_grad():
        bnn.train()(torch.randn(*shape) * 2 + 0.5)  # move the BN statistics off their defaults
    return bnn.eval(), x


@pytest.mark.parametrize(("recipe", "network"), CASES)
def test_packed_size_is_within_3_percent_of_the_file(recipe: str, network: str) -> None:
    bnn, x = _converted(recipe, network)
    result = summary(bnn, x, print_fn=None)
    bnn.schedule.finalize(bnn)
    written = len(pack(bnn, x))
    t = result.totals
    assert t.packed_size_exact
    assert abs(t.packed_size_bytes - written) <= 0.03 * written
    # the layers own every tensor byte the file holds but for ops that are no layer (adds)
    layers = sum(row.memory_bytes for row in result.rows)
    assert 0 < layers < written
    assert t.compression == pytest.approx(t.float_size_bytes / t.packed_size_bytes)


def test_binary_layer_rows_hold_their_packed_words_and_thresholds() -> None:
    bnn, x = _converted("reactnet", "SmallCNN")  # conv2, conv3: 8 -> 16 -> 16 channels, 3x3
    rows = {row.name: row for row in summary(bnn, x, print_fn=None).rows}
    # one 64-bit word per output and tap for up to 64 input channels, then the quantize's
    # float32 thresholds and int8 signs for the input channels
    assert rows["conv2"].memory_bytes == 16 * 9 * 8 + 4 * 8 + 8
    assert rows["conv3"].memory_bytes == 16 * 9 * 8 + 4 * 16 + 16
    # the RPReLU between bn2 and conv3's binarizer keeps bn2 a 16-channel affine; bn3 takes
    # conv3's alpha (no affine of its own)
    assert rows["bn2"].memory_bytes == rows["bn3"].memory_bytes == 2 * 16 * 4


class Cumulative(nn.Module):
    """A conv followed by an op the runtime does not have (cumsum): summary still works."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(t).cumsum(1))


def test_a_network_that_cannot_be_exported_gets_an_estimate_that_says_why() -> None:
    x = torch.randn(2, 3, 6, 6)
    result = summary(Cumulative(), x, print_fn=None)
    t = result.totals
    assert not t.packed_size_exact
    assert t.packed_size_bytes == 4 * (3 * 8 * 9 + 8 * 4 + 4)  # 32 bits per float parameter
    assert t.packed_size_note.startswith("estimate, the network cannot be exported: ")
    assert "cumsum" in t.packed_size_note
    assert "Packed size" in result.table() and "estimate" in result.table()
