"""Training schedules (placeholder interface; the training work fills it in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Schedule:
    """Stages of training (which binarizers are on) and the progressive lambda ramp."""

    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Schedule:
        return cls(dict(config or {}))
