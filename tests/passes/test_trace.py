"""passes.trace: leaves, eval-mode tracing, and errors that name the module and the line."""

from __future__ import annotations

import pytest
import torch
from graph_models import TinyResNet, module_counts
from torch import nn

from operators import BinaryConv2d, RPReLU
from operators.errors import ConversionError
from passes.trace import trace


class Gate(nn.Module):
    """Data-dependent control flow: not traceable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2.0
        return x


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(x))


class TrainingBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 if self.training else x - 1.0


def test_torch_and_binarize_modules_are_leaves() -> None:
    model = nn.Sequential(BinaryConv2d(3, 4, 3, input_binarizer="dysign"), RPReLU(4))
    gm = trace(model)
    assert module_counts(gm) == {"BinaryConv2d": 1, "RPReLU": 1}
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_module", "output"]


def test_resnet_is_traced_to_leaf_calls_and_runs_identically() -> None:
    model = TinyResNet().eval()
    gm = trace(model)
    counts = module_counts(gm)
    assert counts["Conv2d"] == 6 and counts["BatchNorm2d"] == 6 and counts["Linear"] == 1
    assert counts["ReLU"] == 5  # the shared relus are still shared here: one node per call
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(gm(x), model(x))


def test_traces_in_eval_mode_and_restores_the_training_flag() -> None:
    model = TrainingBranch().train()
    gm = trace(model)
    assert model.training and gm.training
    x = torch.randn(3)
    assert torch.equal(gm(x), x - 1.0)


def test_data_dependent_control_flow_names_module_line_and_escape_hatches() -> None:
    with pytest.raises(ConversionError) as info:
        trace(Wrapped())
    message = str(info.value)
    assert "module 'gate' (Gate)" in message
    assert "if x.sum() > 0:" in message and "test_trace.py" in message
    assert "leaf_modules=['gate']" in message and "concrete_args" in message


@pytest.mark.parametrize("leaf", ["gate", Gate])
def test_user_leaf_modules_by_name_or_type(leaf: str | type) -> None:
    gm = trace(Wrapped(), leaf_modules=[leaf])
    assert module_counts(gm) == {"Conv2d": 1, "Gate": 1}


def test_concrete_args_fix_python_arguments() -> None:
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, double: bool = False) -> torch.Tensor:
            return x * 2.0 if double else x

    gm = trace(Scaled(), concrete_args={"double": True})
    x = torch.randn(4)
    assert torch.equal(gm(x), x * 2.0)
    assert torch.equal(gm(x, True), x * 2.0)


def test_bad_leaf_spec_is_reported() -> None:
    with pytest.raises(ConversionError, match="module types or qualified names"):
        trace(Wrapped(), leaf_modules=[3])


def test_failure_in_the_root_forward_suggests_a_submodule() -> None:
    class Loop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for step in range(x.shape[0]):
                x = x + step
            return x

    with pytest.raises(ConversionError) as info:
        trace(Loop())
    message = str(info.value)
    assert "in the root Loop" in message and "for step in range(x.shape[0]):" in message
    assert "move that code into a submodule" in message
