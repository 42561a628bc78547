"""binarize.summary: per-layer counts and totals against numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from binarize.convert import convert
from binarize.pack import pack
from binarize.summary import ModelSummary, summary
from operators.errors import ConversionError
from passes.trace import trace

x = torch.randn(2, 3, 6, 6)


def small() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def rows(result: ModelSummary) -> dict[str, tuple[object, ...]]:
    return {
        r.name: (r.kind, r.input_bits, r.weight_bits, r.parameters, r.memory_bytes,
                 r.float_macs, r.binary_macs, r.output_shape)
        for r in result.rows
    }  # fmt: skip


def test_float_model(capsys: pytest.CaptureFixture[str]) -> None:
    model = small()
    result = summary(model, x)
    table = rows(result)
    # per sample: 6*6*8 outputs, each 3*3*3 MACs; the linear layer 4*8
    assert table["0"] == ("Conv2d", 32, 32, 216, 864.0, 7776, 0, (8, 6, 6))
    assert table["1"] == ("BatchNorm2d", None, None, 16, 64.0, 0, 0, (8, 6, 6))
    assert table["3"][5] == 6 * 6 * 8 * 8 * 9
    assert table["8"] == ("Linear", 32, 32, 36, 144.0, 32, 0, (4,))
    t = result.totals
    assert t.parameters == 216 + 16 + 576 + 16 + 36
    assert t.float_size_bytes == 4 * (t.parameters + 2 * 16)  # + BN running mean and var
    assert sum(r.memory_bytes for r in result.rows) == 864 + 64 + 2304 + 64 + 144
    assert t.packed_size_exact and t.packed_size_bytes == len(pack(trace(model), x))
    assert t.binary_macs == 0 and t.binary_mac_share == 0.0
    assert t.ops == 7776 + 20736 + 32
    printed = capsys.readouterr().out
    assert "Compression" in printed and "BatchNorm2d" in printed


def test_reactnet_model() -> None:
    bnn = convert(small(), "reactnet", x)
    result = summary(bnn, x, print_fn=None)
    table = rows(result)
    # 576 one-bit weights in 8 x 3 x 3 64-bit words + 8 float32 thresholds (the RSign shifts
    # and the BN before them) + 8 int8 signs; alpha folds into the BN that follows
    assert table["3"] == ("BinaryConv2d", 1, 1, 576 + 8, 8 * 9 * 8 + 4 * 8 + 8, 0, 20736,
                          (8, 6, 6))  # fmt: skip
    assert table["2"][0] == "RPReLU" and table["2"][4] == 4 * 3 * 8
    t = result.totals
    assert t.binary_macs == 20736 and t.float_macs == 7776 + 32
    assert t.ops == 20736 / 64 + 7776 + 32
    assert t.binary_mac_share == pytest.approx(20736 / (20736 + 7808))
    assert t.packed_size_bytes == len(pack(bnn, x))
    assert t.compression == pytest.approx(t.float_size_bytes / t.packed_size_bytes)


def test_dybnn_hyper_heads_and_unfolded_scale() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 2, 1))  # fmt: skip
    bnn = convert(model, "dybnn", x, shortcuts=False)
    table = rows(summary(bnn, x, print_fn=None))
    # DySign(8): hidden max(8 // 16, 8) = 8, fc1 8x8 and fc2 8x8 run once per sample
    assert table["1"][5] == 64 + 64 and table["1"][6] == 36 * 8 * 72
    # no BN reads the binary conv: alpha and bias become a 2*8-float affine; the DySign head
    # (8*8 + 8 + 8*8 + 8 parameters) is kept in float; the weights are 8 x 3 x 3 64-bit words
    assert table["1"][4] == 8 * 9 * 8 + 4 * (2 * 8 + 144)
    # DyPReLU(8): fc1 8x8, fc2 8x16
    assert table["2"][0] == "DyPReLU" and table["2"][5] == 64 + 128


def test_shared_module_parameters_are_counted_once() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(t))

    result = summary(Twice(), x, print_fn=None)
    assert [r.parameters for r in result.rows] == [12, 0]
    assert [r.float_macs for r in result.rows] == [3 * 36 * 3, 3 * 36 * 3]
    assert result.totals.parameters == 12


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.sum() > 0:  # control flow on a tensor value: not traceable
            return self.conv(t)
        return t


def test_untraceable_model_is_a_conversion_error_naming_the_line() -> None:
    with pytest.raises(ConversionError, match=r"cannot trace Branchy(.|\n)*if t\.sum\(\) > 0"):
        summary(Branchy(), x, print_fn=None)


def test_example_inputs_the_model_rejects_name_the_failing_node() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2))  # needs 4*4*4
    with pytest.raises(ConversionError, match=r"does not run on example_inputs(.|\n)*target=2"):
        summary(model, x, print_fn=None)


def test_summary_leaves_a_training_model_as_it_was() -> None:
    model = small().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary(model, x, print_fn=None)
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched


def test_model_without_weights_has_no_compression_or_binary_share() -> None:
    model = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    t = summary(model, x, print_fn=None).totals
    assert (t.parameters, t.float_macs, t.binary_macs) == (0, 0, 0)
    assert t.packed_size_bytes == len(pack(trace(model), x))  # the header and graph only
    assert t.compression == 1.0 and t.binary_mac_share == 0.0


class Modern(nn.Module):
    """A binary-able conv, a squeeze-excitation branch, a Linear applied channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = self.conv(self.stem(t))
        t = t * torch.sigmoid(self.fc2(torch.relu(self.fc1(t.mean((2, 3), keepdim=True)))))
        t = self.mix(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(t.mean((2, 3)))


def test_every_selection_decision_is_shown_with_its_reason() -> None:
    from binarize import recipes
    from passes.base import run_passes
    from passes.trace import trace

    student = run_passes(trace(Modern()), recipes.get("reactnet").build_passes((x,)))
    result = summary(student, x, print_fn=None)
    decided = {row.name: row.decision for row in result.rows if row.decision is not None}
    assert decided == {
        "stem": "float: first layer (reads a graph input)",
        "conv": "binary: global default",
        "fc1": "float: squeeze-excitation branch",
        "fc2": "float: squeeze-excitation branch",
        "mix": "float: Linear applied channels-last (input [N, 6, 6, 8], features on the last "
        "dim): binary linear layers take [N, F] inputs only (a 1x1 conv on [N, C, H, W] can be "
        "binary)",
        "head": "float: last layer (writes a graph output)",
    }
    assert {row.kind for row in result.rows if row.name == "conv"} == {"BinaryConv2d"}
    lines = result.table().splitlines()
    assert any(line.split() == ["fc2", "float:", "squeeze-excitation", "branch"] for line in lines)
    assert any(line.split()[:2] == ["Layer", "Decision"] for line in lines)
    float_table = summary(Modern(), x, print_fn=None)
    assert all(row.decision is None for row in float_table.rows)
    assert "Decision" not in float_table.table()
