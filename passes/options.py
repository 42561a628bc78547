"""Checks shared by the option classes of the passes.

Each option a pass takes is declared once, as a field of that pass's frozen option dataclass
(``LayerSelection``, ``BinarizerOptions``, ``ActivationOptions``, ``ShortcutOptions``), and
checked once, in its ``__post_init__``, with these helpers: a bad value raises
:class:`binarize.ConversionError` naming ``Class.field``, the value and what is allowed.
``binarize.recipes`` composes the option objects; it does not re-declare or re-check them.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Collection, Mapping
from typing import Any

from operators.errors import ConversionError

#: Constructor arguments a pass fills in itself; they are never options.
SET_BY_THE_PASS = frozenset({"device", "dtype"})


def check_choice(owner: str, name: str, value: Any, allowed: Collection[Any]) -> None:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ConversionError(
            f"{owner}.{name} {value!r} is not one of {list(allowed)}. What to do: pick one of "
            "those."
        )


def check_flag(owner: str, name: str, value: Any) -> None:
    """``value`` must be True or False."""
    if not isinstance(value, bool):
        raise ConversionError(f"{owner}.{name} must be True or False, got {value!r}.")


def check_number(owner: str, name: str, value: Any) -> None:
    """``value`` must be a real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConversionError(f"{owner}.{name} must be a number, got {value!r}.")


def check_constructor_options(
    owner: str,
    name: str,
    options: Any,
    choice: str,
    constructor: Callable[..., Any] | None,
    filled: Collection[str],
) -> dict[str, Any]:
    """``options`` must be keyword arguments of ``constructor`` (what ``choice`` builds) other
    than the ones the pass
    passes itself: the first (the channel count), ``filled``, ``device`` and ``dtype``. Returns
    them as a new dict. ``constructor=None`` (a choice that builds nothing, such as
    ``"identity"``) takes none.
    """
    if not isinstance(options, Mapping) or not all(isinstance(key, str) for key in options):
        raise ConversionError(
            f"{owner}.{name} must be a dict of keyword arguments, got {options!r}."
        )
    accepted: list[str] = []
    if constructor is not None:
        parameters = list(inspect.signature(constructor).parameters.values())[1:]
        accepted = [
            parameter.name
            for parameter in parameters
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            and parameter.name not in {*filled, *SET_BY_THE_PASS}
        ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        target = constructor.__name__ if constructor is not None else "it"
        takes = f"{target} accepts {accepted}" if accepted else f"{target} takes none"
        raise ConversionError(
            f"{owner}.{name} {dict(options)} do not fit {choice!r}: {unknown} are not its "
            f"arguments ({takes}). What to do: pass only those."
        )
    return dict(options)
