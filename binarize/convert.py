"""``binarize.convert``: float model -> trainable binary network, by a recipe of graph passes.

    bnn = binarize.convert(model, recipe="dybnn", example_inputs=(x,))
    bnn(x)            # the student's forward
    bnn.student       # the rewritten torch.fx.GraphModule
    bnn.teacher       # frozen eval-mode copy of the float model (for distillation), or None

The model is deep-copied, traced (:mod:`passes.trace`) and rewritten by the recipe's passes
(:meth:`binarize.recipes.Recipe.build_passes`, run by :func:`passes.base.run_passes`); the
original model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import fx, nn

from binarize import recipes
from binarize.recipes import Recipe
from binarize.schedule import Schedule
from operators.errors import ConversionError
from passes.base import run_passes
from passes.export import check_exportable
from passes.shapes import input_tuple
from passes.trace import LeafSpec, trace


class BinaryModel(nn.Module):
    """A converted network: the student GraphModule plus what training needs.

    Attributes:
        student: the rewritten ``torch.fx.GraphModule``; ``forward`` is its forward, and
            ``parameters()`` / ``state_dict()`` hold its tensors only (keys ``student.*``).
        teacher: frozen (eval mode, ``requires_grad=False``) copy of the original float model,
            or None. It is held outside the module tree, so optimizers, DDP and checkpoints
            never see it and ``train()`` leaves it in eval mode; ``.to()``, ``.cuda()``,
            ``.half()``... move and cast it along with the student (``_apply`` is forwarded).
        recipe: the :class:`~binarize.recipes.Recipe` that produced it (overrides applied).
        schedule: ``Schedule.from_config(recipe.schedule)``, the training stages.
    """

    def __init__(
        self,
        student: fx.GraphModule,
        teacher: nn.Module | None,
        recipe: Recipe,
        schedule: Schedule,
    ) -> None:
        super().__init__()
        self.student = student
        # A tuple is not registered as a child module: the teacher stays out of parameters(),
        # state_dict(), named_modules() and train().
        self._teacher: tuple[nn.Module, ...] = (teacher,) if teacher is not None else ()
        self.recipe = recipe
        self.schedule = schedule

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        super()._apply(fn, recurse)
        for teacher in self._teacher:
            teacher._apply(fn, recurse)
        return self


def convert(
    model: nn.Module,
    recipe: str | Recipe = "dybnn",
    example_inputs: Any = None,
    *,
    teacher: bool = True,
    leaf_modules: Iterable[LeafSpec] = (),
    concrete_args: Mapping[str, Any] | None = None,
    export_check: str = "raise",
    **overrides: Any,
) -> BinaryModel:
    """Turn a float model into a trainable binary network following ``recipe``.

    Args:
        model: the float network (left untouched: conversion works on a deep copy).
        recipe: a registered name (``binarize.recipes.names()``: xnor, bireal, bulat,
            reactnet, dybnn) or a :class:`~binarize.recipes.Recipe`.
        example_inputs: a tensor, or a tuple/list of the model's forward arguments; used to
            record shapes (channel counts of new activations, shortcut feasibility).
        teacher: keep a frozen copy of ``model`` as ``BinaryModel.teacher`` for distillation.
        leaf_modules: module types or qualified names to keep as opaque calls when tracing
            (for modules FX cannot trace; their layers stay float).
        concrete_args: fixed values for non-tensor forward arguments (``fx.Tracer.trace``).
        export_check: ``"raise"`` (default): dry-run the export (``binarize.pack``'s lowering)
            now and raise if the runtime could not run the converted network, before any
            training; ``"warn"``: warn instead; ``"off"``: skip (a model you will not pack).
        overrides: recipe fields or flat keywords to change (``Recipe.replace``; the
            keywords are ``binarize.recipes.KEYWORDS``), e.g. ``shortcuts=False``,
            ``activation="prelu"``, ``activation_init=0.0``, ``keep_float=["layer4.1.conv2"]``,
            ``binarize=[...]``.

    Returns:
        A :class:`BinaryModel` in the same training mode as ``model``.

    Raises:
        ConversionError: ``model`` is not an ``nn.Module``; unknown recipe or option, or a
            value the option's class rejects; untraceable model (the message names the
            module and the line), a layer the recipe cannot binarize, or (with
            ``export_check="raise"``) a node the runtime cannot run: the message names the
            node, your module and source line, and what to write instead.
    """
    if not isinstance(model, nn.Module):
        raise ConversionError(
            f"convert needs a torch.nn.Module, got a {type(model).__name__}. What to do: wrap "
            "the computation in an nn.Module whose forward does it, or pass the model itself "
            "rather than its output or its forward method."
        )
    chosen = recipe if isinstance(recipe, Recipe) else recipes.get(recipe)
    if overrides:
        chosen = chosen.replace(**overrides)
    if example_inputs is None:
        raise ConversionError(
            "convert needs example_inputs (a tensor or a tuple of tensors the model accepts) to "
            "record shapes. What to do: pass example_inputs=(torch.randn(1, 3, 224, 224),) or "
            "a batch from your data."
        )
    inputs = input_tuple(example_inputs)
    gm = trace(copy.deepcopy(model), leaf_modules=leaf_modules, concrete_args=concrete_args)
    student = run_passes(gm, chosen.build_passes(inputs))
    check_exportable(student, inputs, export_check)
    return BinaryModel(
        student,
        frozen_copy(model) if teacher else None,
        chosen,
        Schedule.from_config(chosen.schedule),
    )


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter's ``requires_grad`` off."""
    return copy.deepcopy(model).eval().requires_grad_(False)
