"""Schedule: stages switch where configured and lambda follows the ramp formula, per step."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from binarize.schedule import ProgressiveRamp, Schedule, Stage, param_groups
from operators import BinaryConv2d, binarizers, binary_layers
from operators.errors import TrainingError

from .helpers import TWO_STAGES


def two_layer_model() -> nn.Sequential:
    return nn.Sequential(
        BinaryConv2d(2, 4, 3, input_binarizer="progressive"),
        BinaryConv2d(4, 4, 1, input_binarizer="approx"),
    )


def state(model: nn.Module) -> tuple[bool, bool, float]:
    """(activations enabled, weights binary, lambda of the progressive binarizer)."""
    progressive = next(b for b in binarizers(model) if b.backward == "progressive")
    layers = list(binary_layers(model))
    enabled = {b.enabled for b in binarizers(model)}
    weights = {layer.binarize_weights for layer in layers}
    assert len(enabled) == 1 and len(weights) == 1
    return enabled.pop(), weights.pop(), float(progressive.lam)


def test_two_stages_and_geometric_ramp_step_by_step() -> None:
    model = two_layer_model()
    schedule = Schedule.from_config(TWO_STAGES)
    schedule.on_train_begin(model, total_steps=10)
    assert schedule.stage_steps() == [5, 5]
    seen = []
    for step in range(10):
        schedule.on_step(model, step)
        seen.append(state(model))
    for step, (activations, weights, lam) in enumerate(seen):
        stage_step = step % 5
        assert activations is True
        assert weights is (step >= 5)
        # geometric from 1 to 1024 over the stage's 5 steps: 1024 ** (k / 4)
        assert lam == pytest.approx(1024.0 ** (stage_step / 4), rel=1e-6)
    assert seen[4][2] == 1024.0 and seen[9][2] == 1024.0
    assert schedule.current_stage.name == "weights"


def test_the_approx_binarizer_keeps_its_lambda() -> None:
    model = two_layer_model()
    schedule = Schedule.from_config(TWO_STAGES)
    schedule.on_train_begin(model, total_steps=6)
    schedule.on_step(model, 2)
    approx = model[1].input_binarizer
    assert float(approx.lam) == 1.0


def test_linear_ramp_with_ramp_fraction() -> None:
    ramp = ProgressiveRamp(lam_min=2.0, lam_max=10.0, ramp="linear", ramp_fraction=0.5)
    assert ramp.value(0.0) == 2.0
    assert ramp.value(0.25) == pytest.approx(6.0)
    assert ramp.value(0.5) == 10.0
    assert ramp.value(0.9) == 10.0


@settings(max_examples=30, deadline=None)
@given(
    total=st.integers(1, 200),
    first=st.floats(0.0, 1.0),
    lam_max=st.floats(2.0, 4096.0),
)
def test_stage_boundaries_and_lambda_match_the_formula(
    total: int, first: float, lam_max: float
) -> None:
    schedule = Schedule.from_config(
        {
            "stages": [
                {"name": "a", "activations": True, "weights": False, "fraction": first},
                {"name": "b", "activations": True, "weights": True, "fraction": 1.0 - first},
            ],
            "progressive": {"lam_min": 1.0, "lam_max": lam_max},
        }
    )
    schedule.on_train_begin(nn.Identity(), total)
    counts = schedule.stage_steps()
    assert counts[0] == round(first * total) and sum(counts) == total
    for step in range(total):
        index, t = schedule.locate(step)
        start = 0 if index == 0 else counts[0]
        assert index == (0 if step < counts[0] else 1)
        assert t == (step - start) / max(counts[index] - 1, 1)
        expected = lam_max if t >= 1.0 else lam_max**t
        assert schedule.lam(step) == pytest.approx(expected, rel=1e-9)


def test_stages_in_epochs() -> None:
    schedule = Schedule.from_config(
        {"stages": [{"name": "a", "weights": False, "epochs": 2},
                    {"name": "b", "weights": True, "fraction": 1.0}]}
    )
    schedule.on_train_begin(nn.Identity(), total_steps=50, steps_per_epoch=10)
    assert schedule.stage_steps() == [20, 30]
    with pytest.raises(TrainingError, match="steps_per_epoch"):
        schedule.on_train_begin(nn.Identity(), total_steps=50)
    with pytest.raises(TrainingError, match="only 15"):
        schedule.on_train_begin(nn.Identity(), total_steps=15, steps_per_epoch=10)


def test_weight_decay_follows_the_stage_on_conv_weights_only() -> None:
    model = nn.Sequential(two_layer_model(), nn.Flatten(), nn.Linear(4, 2))
    schedule = Schedule.from_config(TWO_STAGES)
    groups = param_groups(model)
    assert groups[0]["params"] == [model[0][0].weight, model[0][1].weight]
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    schedule.on_train_begin(model, total_steps=4)
    decays = []
    for step in range(4):
        schedule.on_step(model, step)
        schedule.update_optimizer(optimizer)
        decays.append([g["weight_decay"] for g in optimizer.param_groups])
    assert decays == [[1e-5, 0.0], [1e-5, 0.0], [0.0, 0.0], [0.0, 0.0]]


def test_state_dict_resumes_the_same_state() -> None:
    model_a, model_b = two_layer_model(), two_layer_model()
    first = Schedule.from_config(TWO_STAGES)
    first.on_train_begin(model_a, total_steps=20)
    for step in range(7):
        first.on_step(model_a, step)
    first.on_epoch_end(model_a, 0)
    second = Schedule.from_config(TWO_STAGES)
    second.on_train_begin(model_b, total_steps=5)
    second.load_state_dict(first.state_dict())
    second.on_step(model_b, second.step)
    assert state(model_a) == state(model_b)
    assert second.state_dict() == first.state_dict()
    for step in range(7, 20):
        first.on_step(model_a, step)
        second.on_step(model_b, step)
        assert state(model_a) == state(model_b)


def test_finalize_is_all_binary_hard_sign() -> None:
    model = two_layer_model()
    schedule = Schedule.from_config(TWO_STAGES)
    schedule.on_train_begin(model, total_steps=10)
    assert state(model) == (True, False, 1.0)
    schedule.finalize(model)
    assert state(model) == (True, True, 1024.0)
    x = torch.randn(3, 2, 5, 5)
    assert set(model[0].input_binarizer(x).unique().tolist()) == {-1.0, 1.0}


def test_defaults_are_reactnet_two_step() -> None:
    schedule = Schedule.from_config(None)
    assert [(s.activations, s.weights, s.fraction, s.weight_decay) for s in schedule.stages] == [
        (True, False, 0.5, 1e-5),
        (True, True, 0.5, 0.0),
    ]
    assert schedule.progressive is None
    assert schedule.replace(progressive=True).progressive == ProgressiveRamp()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"stages": []}, "at least one stage"),
        ({"stages": [{"name": "a", "fraction": 0.7}]}, "sum to 1"),
        ({"stages": [{"name": "a"}]}, "exactly one of"),
        ({"stages": [{"name": "a", "fraction": 1.0, "lr": 3}]}, "unknown keys"),
        ({"progressive": {"ramp": "cubic"}}, "unknown"),
        ({"progressive": {"lam_min": 0.0}}, "lam_min"),
        ({"steps": 3}, "unknown keys"),
    ],
)
def test_bad_configs_say_what_is_wrong(config: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        Schedule.from_config(config)


def test_on_step_before_on_train_begin_is_an_error() -> None:
    with pytest.raises(TrainingError, match="on_train_begin"):
        Schedule().on_step(nn.Identity(), 0)


def test_stage_validation() -> None:
    with pytest.raises(TrainingError, match="weight_decay"):
        Stage("a", fraction=1.0, weight_decay=-1.0)
    assert math.isclose(ProgressiveRamp().value(0.5), 32.0)
