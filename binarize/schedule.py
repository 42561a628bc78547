"""Training schedules for binary networks: stages and the progressive lambda ramp.

A `Schedule` is a callback. It drives a model's binarizers from the global step alone, so the
same object works in `binarize.finetune`, in a hand-written PyTorch loop or in a Lightning
callback, and a resumed run continues exactly where it stopped:

    schedule = bnn.schedule                      # or Schedule.from_config({...})
    schedule.on_train_begin(bnn, total_steps=epochs * len(loader))
    for step, (x, y) in enumerate(batches):      # the global step, counted across epochs
        schedule.on_step(bnn, step)              # before the forward of that step
        schedule.update_optimizer(optimizer)     # per-stage weight decay (see param_groups)
        ...
    schedule.finalize(bnn)                       # all binary, hard sign: the state to export

Stages implement the two-step ("reverse-order") training of Bulat et al. 2019 (arXiv
1904.05868) and ReActNet (Liu et al. 2020, arXiv 2003.03488): stage 1 binarizes the
activations with float weights, stage 2 binarizes both; ReActNet applies weight decay 1e-5 to
the conv weights in stage 1 and 0 in stage 2. Inside every stage, progressive quantization
(Bulat 2019) raises lambda of the `progressive` binarizers, whose forward is tanh(lambda x),
from `lam_min` to `lam_max` over the stage's steps; at `lam_max` the forward is the hard sign.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from operators.errors import TrainingError

_RAMPS = ("geometric", "linear")
_STAGE_KEYS = {"name", "activations", "weights", "fraction", "epochs", "weight_decay"}
_PROGRESSIVE_KEYS = {"lam_min", "lam_max", "ramp", "ramp_fraction"}


@dataclass(frozen=True)
class Stage:
    """One stage of training.

    Attributes:
        name: shown in progress bars and in `History`.
        activations: the activation binarizers are on (False: identity).
        weights: binary layers use alpha * sign(W) (False: their latent float weights).
        fraction: share of the total steps (used when `epochs` is None).
        epochs: explicit length in epochs (needs `steps_per_epoch` at `on_train_begin`).
        weight_decay: decay of the conv weights during the stage; None leaves the
            optimizer's value alone.
    """

    name: str
    activations: bool = True
    weights: bool = True
    fraction: float | None = None
    epochs: int | None = None
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.epochs is None):
            raise TrainingError(
                f"schedule stage {self.name!r} needs exactly one of 'fraction' or 'epochs' "
                f"(got fraction={self.fraction}, epochs={self.epochs})"
            )
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise TrainingError(
                f"schedule stage {self.name!r}: fraction must lie in [0, 1], got {self.fraction}"
            )
        if self.epochs is not None and self.epochs < 0:
            raise TrainingError(
                f"schedule stage {self.name!r}: epochs must be >= 0, got {self.epochs}"
            )
        if self.weight_decay is not None and self.weight_decay < 0:
            raise TrainingError(
                f"schedule stage {self.name!r}: weight_decay must be >= 0, got "
                f"{self.weight_decay}"
            )


@dataclass(frozen=True)
class ProgressiveRamp:
    """The lambda of tanh(lambda x) as a function of the position t in [0, 1] in a stage.

    geometric: lambda(t) = lam_min * (lam_max / lam_min) ** (t / ramp_fraction)
    linear:    lambda(t) = lam_min + (lam_max - lam_min) * t / ramp_fraction
    clamped at lam_max once t >= ramp_fraction. Bulat et al. 2019 raise lambda until the
    forward is the sign but fix no numbers; the defaults (1 -> 1024, geometric, over the
    whole stage) are this library's.
    """

    lam_min: float = 1.0
    lam_max: float = 1024.0
    ramp: str = "geometric"
    ramp_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.ramp not in _RAMPS:
            raise TrainingError(
                f"progressive ramp {self.ramp!r} is unknown; use one of {list(_RAMPS)}"
            )
        if not 0.0 < self.lam_min <= self.lam_max:
            raise TrainingError(
                f"progressive ramp needs 0 < lam_min <= lam_max, got lam_min={self.lam_min}, "
                f"lam_max={self.lam_max}"
            )
        if not 0.0 < self.ramp_fraction <= 1.0:
            raise TrainingError(
                f"progressive ramp_fraction must lie in (0, 1], got {self.ramp_fraction}"
            )

    def value(self, t: float) -> float:
        """Lambda at position `t` (0 = first step of the stage, 1 = its last step)."""
        u = min(max(t, 0.0) / self.ramp_fraction, 1.0)
        if u >= 1.0:
            return self.lam_max
        if self.ramp == "geometric":
            return self.lam_min * (self.lam_max / self.lam_min) ** u
        return self.lam_min + (self.lam_max - self.lam_min) * u


def _default_stages() -> tuple[Stage, ...]:
    return (
        Stage("activations", activations=True, weights=False, fraction=0.5, weight_decay=1e-5),
        Stage("weights", activations=True, weights=True, fraction=0.5, weight_decay=0.0),
    )


@dataclass
class Schedule:
    """Stages of training and the progressive lambda ramp, as a training-loop callback.

    Build it with `Schedule.from_config(recipe.schedule)`; change it with `replace(...)`.
    The state of the model at step s is a pure function of s and `total_steps`, so
    `state_dict()` only has to carry those and resuming continues bit for bit.
    """

    stages: tuple[Stage, ...] = field(default_factory=_default_stages)
    progressive: ProgressiveRamp | None = None
    total_steps: int | None = None
    steps_per_epoch: int | None = None
    step: int = -1
    epoch: int = -1

    def __post_init__(self) -> None:
        self.stages = tuple(self.stages)
        if not self.stages:
            raise TrainingError("a schedule needs at least one stage; got an empty 'stages'")
        fractions = [s.fraction for s in self.stages if s.fraction is not None]
        only_fractions = all(s.epochs is None for s in self.stages)
        if only_fractions and not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise TrainingError(
                f"schedule stage fractions must sum to 1, got {sum(fractions):.6g} "
                f"from {[s.name for s in self.stages]}"
            )

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Schedule | None) -> Schedule:
        """Build a schedule from a recipe's `schedule` config dict (below).

        `{"stages": [{"name", "activations", "weights", "fraction" | "epochs",
        "weight_decay"}, ...], "progressive": None | {"lam_min", "lam_max", "ramp",
        "ramp_fraction"}}`. Missing keys take the defaults: two ReActNet stages (activations,
        then weights; half the steps each; conv weight decay 1e-5 then 0) and no ramp.
        A `Schedule` is returned as a fresh copy.
        """
        if isinstance(config, Schedule):
            return config.replace()
        config = dict(config or {})
        unknown = set(config) - {"stages", "progressive"}
        if unknown:
            raise TrainingError(
                f"schedule config has unknown keys {sorted(unknown)}; expected 'stages' "
                "and 'progressive'"
            )
        stages = _default_stages()
        if config.get("stages") is not None:
            stages = tuple(_stage_from_dict(i, d) for i, d in enumerate(config["stages"]))
        return cls(stages=stages, progressive=_ramp_from_config(config.get("progressive")))

    def replace(self, **changes: Any) -> Schedule:
        """A copy with some fields changed (stages, progressive), its progress reset."""
        if "progressive" in changes and not isinstance(
            changes["progressive"], ProgressiveRamp | None
        ):
            changes["progressive"] = _ramp_from_config(changes["progressive"])
        if "stages" in changes:
            changes["stages"] = tuple(
                s if isinstance(s, Stage) else _stage_from_dict(i, s)
                for i, s in enumerate(changes["stages"])
            )
        base = {"total_steps": None, "steps_per_epoch": None, "step": -1, "epoch": -1}
        return dataclasses.replace(self, **{**base, **changes})

    # ----------------------------------------------------------------------------- queries
    def stage_steps(self) -> list[int]:
        """Number of steps of each stage; the last one takes what rounding leaves over."""
        total = self._require_started()
        counts = []
        for stage in self.stages[:-1]:
            if stage.epochs is not None:
                counts.append(stage.epochs * self._require_steps_per_epoch(stage))
            else:
                counts.append(round(stage.fraction * total))
        last = self.stages[-1]
        remaining = total - sum(counts)
        if last.epochs is not None:
            remaining = min(remaining, last.epochs * self._require_steps_per_epoch(last))
        if remaining < 0:
            raise TrainingError(
                f"schedule stages need {sum(counts)} steps before the last stage but the run "
                f"has only {total}; shorten the stages' 'epochs' or train longer"
            )
        return [*counts, remaining]

    def locate(self, step: int) -> tuple[int, float]:
        """(stage index, position t in [0, 1] inside that stage) of a global step.

        Steps past every stage stay in the last stage at t = 1.
        """
        start = 0
        counts = self.stage_steps()
        for index, count in enumerate(counts):
            if step < start + count:
                return index, (step - start) / max(count - 1, 1)
            start += count
        last = max(i for i, c in enumerate(counts) if c > 0) if any(counts) else len(counts) - 1
        return last, 1.0

    @property
    def current_stage(self) -> Stage:
        """The stage of the last step passed to `on_step` (the first stage before any)."""
        if self.total_steps is None or self.step < 0:
            return self.stages[0]
        return self.stages[self.locate(self.step)[0]]

    def lam(self, step: int | None = None) -> float | None:
        """Lambda of the progressive binarizers at `step` (default: the current step)."""
        if self.progressive is None:
            return None
        step = self.step if step is None else step
        return self.progressive.value(self.locate(max(step, 0))[1])

    def weight_decay(self) -> float | None:
        """Weight decay of the conv weights in the current stage (None: not set by stages)."""
        return self.current_stage.weight_decay

    # ----------------------------------------------------------------------------- callbacks
    def on_train_begin(
        self, model: nn.Module, total_steps: int, steps_per_epoch: int | None = None
    ) -> None:
        """Start a run: fix its length (which places the stages) and set the state of step 0.

        To resume, call `load_state_dict` afterwards and `on_step` at the resumed step.
        """
        if total_steps <= 0:
            raise TrainingError(f"a schedule needs total_steps > 0, got {total_steps}")
        self.total_steps = int(total_steps)
        self.steps_per_epoch = steps_per_epoch
        self.epoch = -1
        self.stage_steps()  # validates the stage lengths against the run
        self.on_step(model, 0)

    def on_step(self, model: nn.Module, step: int) -> None:
        """Put the model in the state of global `step` (call before that step's forward)."""
        self._require_started()
        self.step = int(step)
        self._apply(model, self.current_stage, self.lam())

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Record the finished epoch (0-based); the state itself follows the steps."""
        self.epoch = int(epoch)

    def finalize(self, model: nn.Module) -> None:
        """The export state: every binarizer on with its hard sign, every weight binary."""
        from operators import binarizers, set_binarization

        set_binarization(model, activations=True, weights=True)
        for binarizer in binarizers(model):
            binarizer.lam.fill_(max(float(binarizer.lam_max), float(binarizer.lam)))

    def update_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Set the stage's weight decay on the param groups marked `decay=True`.

        Build the groups with `param_groups(model)`; groups without the mark keep theirs.
        """
        decay = self.weight_decay()
        if decay is None:
            return
        for group in optimizer.param_groups:
            if group.get("decay", False):
                group["weight_decay"] = decay

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Progress of the run (the config itself comes from the recipe)."""
        return {
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "step": self.step,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the progress saved by `state_dict()`."""
        missing = {"total_steps", "steps_per_epoch", "step", "epoch"} - set(state)
        if missing:
            raise TrainingError(
                f"schedule state is missing {sorted(missing)}; it was not written by "
                "Schedule.state_dict()"
            )
        self.total_steps = state["total_steps"]
        self.steps_per_epoch = state["steps_per_epoch"]
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])

    # ----------------------------------------------------------------------------- internals
    def _apply(self, model: nn.Module, stage: Stage, lam: float | None) -> None:
        from operators import binarizers, set_binarization

        set_binarization(model, activations=stage.activations, weights=stage.weights)
        if lam is None:
            return
        for binarizer in binarizers(model):
            if binarizer.backward == "progressive":
                binarizer.lam.fill_(lam)

    def _require_started(self) -> int:
        if self.total_steps is None:
            raise TrainingError(
                "the schedule does not know the run's length yet; call "
                "schedule.on_train_begin(model, total_steps) before on_step"
            )
        return self.total_steps

    def _require_steps_per_epoch(self, stage: Stage) -> int:
        if self.steps_per_epoch is None:
            raise TrainingError(
                f"schedule stage {stage.name!r} is given in epochs; pass steps_per_epoch to "
                "schedule.on_train_begin(model, total_steps, steps_per_epoch)"
            )
        return self.steps_per_epoch


def param_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer param groups: conv weights (marked `decay=True`) and everything else.

    ReActNet decays the conv weights only; biases, BatchNorm, PReLU slopes, thresholds and
    the classifier are not decayed. `Schedule.update_optimizer` changes the first group's
    decay at stage switches.
    """
    decayed: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_conv = isinstance(module, nn.modules.conv._ConvNd)
        if is_conv and module.weight.requires_grad and id(module.weight) not in seen:
            decayed.append(module.weight)
            seen.add(id(module.weight))
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    groups = [{"params": decayed, "weight_decay": weight_decay, "decay": True}]
    if others:
        groups.append({"params": others, "weight_decay": 0.0, "decay": False})
    return groups


def _stage_from_dict(index: int, config: Mapping[str, Any] | Stage) -> Stage:
    if isinstance(config, Stage):
        return config
    unknown = set(config) - _STAGE_KEYS
    if unknown:
        raise TrainingError(
            f"schedule stage {index} has unknown keys {sorted(unknown)}; allowed: "
            f"{sorted(_STAGE_KEYS)}"
        )
    return Stage(**{"name": f"stage{index + 1}", **config})


def _ramp_from_config(
    config: Mapping[str, Any] | ProgressiveRamp | bool | None,
) -> ProgressiveRamp | None:
    if config is None or config is False:
        return None
    if config is True:
        return ProgressiveRamp()
    if isinstance(config, ProgressiveRamp):
        return config
    unknown = set(config) - _PROGRESSIVE_KEYS
    if unknown:
        raise TrainingError(
            f"schedule 'progressive' has unknown keys {sorted(unknown)}; allowed: "
            f"{sorted(_PROGRESSIVE_KEYS)}"
        )
    return ProgressiveRamp(**config)

