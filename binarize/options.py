"""Keyword options declared once (a function's signature) and checked once (a table of checks).

    _Options = options_type(finetune, {"lr": real(0, "the peak learning rate", strict=True),
                                       ...})   # one check per keyword-only parameter
    options = _Options.of(locals())              # first line of finetune: the checks run

`options_type` turns the keyword-only parameters of a function into a frozen dataclass whose
construction runs one check per option; a parameter without a check (or a check without a
parameter) is a TypeError at import time, so a new option cannot skip validation. A check
returns what is wrong (the rule and what to pass) or None; a failure raises `TrainingError`
naming the function, the option and the value.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields, make_dataclass
from typing import Any

import torch

from operators.errors import TrainingError

Check = Callable[[str, Any], str | None]
"""A check takes (name, value) and returns what is wrong with the value, or None."""


def options_type(function: Callable[..., Any], checks: Mapping[str, Check]) -> type:
    """A frozen dataclass of ``function``'s keyword-only parameters, checked on construction.

    ``Options.of(values)`` picks the options out of a mapping (``locals()`` at the top of
    ``function``) and builds the checked instance; a failed check raises
    ``TrainingError("finetune got lr=nan; lr must be a finite number > 0 ...")``.
    """
    names = [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    if set(names) != set(checks):
        raise TypeError(
            f"{function.__name__}: options without a check {sorted(set(names) - set(checks))}, "
            f"checks without an option {sorted(set(checks) - set(names))}"
        )

    def __post_init__(self: Any) -> None:
        for name in names:
            value = getattr(self, name)
            problem = checks[name](name, value)
            if problem is not None:
                raise TrainingError(f"{function.__name__} got {name}={value!r}; {problem}")

    cls = make_dataclass(
        f"{function.__name__}_options",
        [(name, Any) for name in names],
        frozen=True,
        namespace={"__post_init__": __post_init__},
    )
    cls.of = classmethod(lambda c, values: c(**{f.name: values[f.name] for f in fields(c)}))
    return cls


def whole(low: int | None, meaning: str) -> Check:
    """An integer (not a bool, not a float) >= ``low``."""

    def check(name: str, value: Any) -> str | None:
        integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if integral and (low is None or value >= low):
            return None
        bound = f">= {low} and " if low is not None else ""
        return f"{name} must be {bound}a whole number (int): {meaning}"

    return check


def real(low: float, meaning: str, *, strict: bool) -> Check:
    """A finite real number > ``low`` (``strict``) or >= ``low``."""

    def check(name: str, value: Any) -> str | None:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok and math.isfinite(value) and (value > low if strict else value >= low):
            return None
        return f"{name} must be a finite number {'>' if strict else '>='} {low:g}: {meaning}"

    return check


def one_of(choices: Collection[Any]) -> Check:
    def check(name: str, value: Any) -> str | None:
        if isinstance(value, str | None) and value in choices:
            return None
        return f"{name} {value!r} is unknown; use one of {list(choices)}"

    return check


def instance(types: tuple[type, ...], what: str) -> Check:
    """An instance of one of ``types`` (``type(None)`` among them when None is allowed)."""

    def check(name: str, value: Any) -> str | None:
        if isinstance(value, types):
            return None
        return f"{name} must be {what}, got {type(value).__name__}"

    return check


def optional(inner: Check) -> Check:
    """None, or a value that passes ``inner``."""

    def check(name: str, value: Any) -> str | None:
        return None if value is None else inner(name, value)

    return check


def optional_callable(what: str) -> Check:
    def check(name: str, value: Any) -> str | None:
        if value is None or callable(value):
            return None
        return f"{name} must be {what} or None, got {type(value).__name__}"

    return check


def flag(name: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{name} must be True or False"


def device(name: str, value: Any) -> str | None:
    """A device torch can place tensors on now: CUDA asked for must be present."""
    if not isinstance(value, str | torch.device):
        return f"{name} must be 'cpu', 'cuda', 'cuda:<index>' or a torch.device"
    try:
        parsed = torch.device(value)
    except RuntimeError as exc:
        return f"{exc}; use 'cpu', 'cuda' or 'cuda:<index>'"
    if parsed.type == "meta":
        return "the meta device holds no data and cannot train; use 'cpu' or 'cuda'"
    if parsed.type != "cuda":
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return (
            "CUDA is not available here (torch.cuda.is_available() is False: a CPU build "
            "of torch, or no GPU); pass device='cpu'"
        )
    if parsed.index is not None and parsed.index >= count:
        return f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    return None
