"""Recipes: a named list of graph passes plus the defaults that configure them.

A :class:`Recipe` says how ``binarize.convert`` rewrites a float model (which binarizer, which
weight scale, which activation replaces ReLU and where, whether Bi-Real shortcuts are added,
which layers stay float) and how ``binarize.finetune`` trains it (the stage schedule and the
distillation loss). Five are registered, after their papers (PAPERS.md is the authority):

========  ==============  ========  ===================  =========  ==========  ===============
recipe    binarizer       scale     activation (scope)   shortcuts  stages      distillation
========  ==============  ========  ===================  =========  ==========  ===============
xnor      ste             attached  dropped (inputs)     no         1           none
bireal    approx          detached  dropped (binary)     yes        1           none
bulat     progressive     detached  PReLU (binary)       no         2 + ramp    Hinton KD
reactnet  rsign (approx)  detached  RPReLU (binary)      yes        2           distributional
dybnn     dysign (approx) detached  DyPReLU (binary)     yes        2           distributional
========  ==============  ========  ===================  =========  ==========  ===============

Derive one with ``get("dybnn").replace(shortcuts=False)`` (or pass the same keywords to
``convert``), or build a :class:`Recipe` and :func:`register` it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from binarize.errors import ConversionError
from binarize.nn import BINARIZERS, WEIGHT_SCALES
from passes.activations import ACTIVATIONS, SCOPES, SwapActivations
from passes.base import GraphPass
from passes.binarize_layers import BinarizeLayers
from passes.canonicalize import Canonicalize
from passes.select import LayerSelection, SelectLayers, Selector
from passes.shortcuts import AddShortcuts

DISTILL_KINDS = ("distributional", "kd", "mse")

DEFAULT_PASSES: tuple[str, ...] = (
    "canonicalize",  # one module per activation site, no in-place ops, shapes recorded
    "select",  # decide which convs/linears become binary (reads the canonical graph)
    "binarize_layers",  # swap them for BinaryConv2d/BinaryLinear
    "activations",  # after the swap: the binary region is known
    "shortcuts",  # last: wraps each binary conv, including the activation placement
)


def one_stage(weight_decay: float = 0.0) -> dict[str, Any]:
    """A single stage with activations and weights binary from the first step."""
    stage = {"name": "binary", "activations": True, "weights": True, "fraction": 1.0}
    return {"stages": [{**stage, "weight_decay": weight_decay}], "progressive": None}


def two_stages(
    weight_decay: tuple[float, float] = (1e-5, 0.0), progressive: bool = False
) -> dict[str, Any]:
    """Reverse-order initialisation (Bulat 2019; ReActNet): activations first, then weights.

    ReActNet's weight decay is 1e-5 in stage 1 and 0 in stage 2. ``progressive`` adds Bulat's
    tanh(lambda x) ramp, geometric from 1 to 1024 within each stage (PAPERS.md's defaults).
    """
    return {
        "stages": [
            {
                "name": "activations",
                "activations": True,
                "weights": False,
                "fraction": 0.5,
                "weight_decay": weight_decay[0],
            },
            {
                "name": "weights",
                "activations": True,
                "weights": True,
                "fraction": 0.5,
                "weight_decay": weight_decay[1],
            },
        ],
        "progressive": (
            {"lam_min": 1.0, "lam_max": 1024.0, "ramp": "geometric"} if progressive else None
        ),
    }


@dataclass(frozen=True)
class Recipe:
    """How to convert and train one kind of binary network.

    Attributes:
        name, description, source: registry key, one line, and the paper it follows.
        passes: pass names in order (keys of :data:`PASSES`).
        activation_binarizer: ``"ste"``, ``"approx"``, ``"progressive"``, ``"rsign"``,
            ``"dysign"``: the input binarizer of every binary layer.
        weight_scale: ``"detached"``, ``"attached"``, ``"learnable"``, ``"none"``.
        activation: what replaces the in-scope ReLU-family activations: ``"prelu"``,
            ``"rprelu"``, ``"dyprelu"``, ``"identity"`` (drop them) or None (keep them).
        activation_init: initial negative slope of the replacement (0 makes it ReLU).
        activation_scope: ``"inputs"``, ``"binary"`` or ``"all"`` (see passes.activations).
        shortcuts: add a Bi-Real shortcut around every binary conv whose shapes allow.
        keep_first, keep_last, keep_grouped, keep_projections, keep_float, binarize: the layer
            selection (see passes.select).
        binarizer_options, activation_options: extra constructor arguments (e.g.
            ``{"reduction": 8}`` for DySign / DyPReLU).
        schedule: config of ``binarize.schedule.Schedule.from_config``.
        distill: ``"distributional"``, ``"kd"``, ``"mse"`` or None (labels only).
        distill_options: keyword arguments of ``binarize.distill.make_loss``.
    """

    name: str
    description: str
    source: str
    passes: tuple[str, ...] = DEFAULT_PASSES
    activation_binarizer: str = "approx"
    weight_scale: str = "detached"
    activation: str | None = "prelu"
    activation_init: float = 0.25
    activation_scope: str = "binary"
    shortcuts: bool = False
    keep_first: bool = True
    keep_last: bool = True
    keep_grouped: bool = True
    keep_projections: bool = True
    keep_float: tuple[Selector, ...] = ()
    binarize: tuple[Selector, ...] = ()
    binarizer_options: Mapping[str, Any] = field(default_factory=dict)
    activation_options: Mapping[str, Any] = field(default_factory=dict)
    schedule: Mapping[str, Any] = field(default_factory=one_stage)
    distill: str | None = None
    distill_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("passes", "keep_float", "binarize"):
            value = getattr(self, name)
            if isinstance(value, (str, type)):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        checks = (
            ("passes", self.passes, tuple(PASSES)),
            ("activation_binarizer", (self.activation_binarizer,), tuple(BINARIZERS)),
            ("weight_scale", (self.weight_scale,), WEIGHT_SCALES),
            ("activation", (self.activation,), (*ACTIVATIONS, None)),
            ("activation_scope", (self.activation_scope,), SCOPES),
            ("distill", (self.distill,), (*DISTILL_KINDS, None)),
        )
        for field_name, values, allowed in checks:
            bad = [value for value in values if value not in allowed]
            if bad:
                raise ConversionError(
                    f"recipe {self.name!r}: {field_name} {bad[0]!r} is not one of {allowed}."
                )

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed, e.g. ``replace(shortcuts=False)``.

        Raises:
            ConversionError: a name is not a recipe field, or a value is not allowed.
        """
        fields = [item.name for item in dataclasses.fields(self)]
        unknown = [name for name in changes if name not in fields]
        if unknown:
            hints = {name: difflib.get_close_matches(name, fields, n=1) for name in unknown}
            close = "; ".join(
                f"{name!r}: did you mean {hint[0]!r}?" for name, hint in hints.items() if hint
            )
            raise ConversionError(
                f"unknown recipe option(s) {unknown} for recipe {self.name!r}. {close} "
                f"The options are {fields}."
            )
        return dataclasses.replace(self, **changes)

    def layer_selection(self) -> LayerSelection:
        """The selection rules of the ``select`` pass."""
        return LayerSelection(
            keep_first=self.keep_first,
            keep_last=self.keep_last,
            keep_grouped=self.keep_grouped,
            keep_projections=self.keep_projections,
            keep_float=self.keep_float,
            binarize=self.binarize,
        )

    def build_passes(self, example_inputs: tuple[Any, ...]) -> list[GraphPass]:
        """The pipeline: one pass object per name in ``passes`` (those the recipe turns off,
        such as ``shortcuts`` with ``shortcuts=False``, are left out)."""
        built = (PASSES[name](self, example_inputs) for name in self.passes)
        return [graph_pass for graph_pass in built if graph_pass is not None]


PassBuilder = Callable[[Recipe, tuple[Any, ...]], GraphPass | None]

PASSES: dict[str, PassBuilder] = {
    "canonicalize": lambda recipe, inputs: Canonicalize(inputs),
    "select": lambda recipe, inputs: SelectLayers(recipe.layer_selection()),
    "binarize_layers": lambda recipe, inputs: BinarizeLayers(
        recipe.activation_binarizer, recipe.weight_scale, recipe.binarizer_options
    ),
    "activations": lambda recipe, inputs: (
        None
        if recipe.activation is None
        else SwapActivations(
            recipe.activation,
            recipe.activation_init,
            recipe.activation_scope,
            recipe.activation_options,
        )
    ),
    "shortcuts": lambda recipe, inputs: AddShortcuts() if recipe.shortcuts else None,
}
"""Pass builders by the names recipes list: each makes the pass a recipe asks for."""

_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe, *, overwrite: bool = False) -> None:
    """Make ``recipe`` available as ``get(recipe.name)`` and ``convert(..., recipe=name)``."""
    if recipe.name in _REGISTRY and not overwrite:
        raise ConversionError(
            f"a recipe named {recipe.name!r} is already registered; pick another name or pass "
            "overwrite=True."
        )
    _REGISTRY[recipe.name] = recipe


def get(name: str) -> Recipe:
    """The registered recipe ``name`` (a copy: changing its dicts leaves the registry alone)."""
    if name not in _REGISTRY:
        raise ConversionError(f"unknown recipe {name!r}; the registered ones are {names()}.")
    return copy.deepcopy(_REGISTRY[name])


def names() -> list[str]:
    """Names of the registered recipes, in registration order."""
    return list(_REGISTRY)


register(
    Recipe(
        name="xnor",
        description="XNOR-Net: sign with clipped STE, weights alpha*sign(W) with a gradient "
        "through alpha, ReLUs feeding binary layers dropped, no added shortcuts.",
        source="Rastegari et al. 2016, XNOR-Net (arXiv 1603.05279)",
        activation_binarizer="ste",
        weight_scale="attached",
        activation="identity",
        activation_scope="inputs",
    )
)
register(
    Recipe(
        name="bireal",
        description="Bi-Real Net: approx-sign gradient, detached scale, a real-valued shortcut "
        "around every binary conv, no activation in the binary part.",
        source="Liu et al. 2018, Bi-Real Net (arXiv 1808.00278)",
        activation_binarizer="approx",
        activation="identity",
        shortcuts=True,
    )
)
register(
    Recipe(
        name="bulat",
        description="Bulat 2019: progressive tanh(lambda x) -> sign, PReLU for ReLU, reverse-order "
        "two-stage training, Hinton KD from the float teacher.",
        source="Bulat et al. 2019, Improved training of binary networks (arXiv 1904.05868)",
        activation_binarizer="progressive",
        activation="prelu",
        schedule=two_stages(progressive=True),
        distill="kd",
        distill_options={"temperature": 4.0, "label_weight": 1.0},
    )
)
register(
    Recipe(
        name="reactnet",
        description="ReActNet: RSign and RPReLU (learnable shifts), Bi-Real shortcuts, two stages "
        "(weight decay 1e-5 then 0), distributional loss from the float teacher.",
        source="Liu et al. 2020, ReActNet (arXiv 2003.03488)",
        activation_binarizer="rsign",
        activation="rprelu",
        shortcuts=True,
        schedule=two_stages(),
        distill="distributional",
    )
)
register(
    Recipe(
        name="dybnn",
        description="DyBNN: ReActNet with per-sample thresholds, DySign and DyPReLU.",
        source="Zhang et al. 2021, Dynamic Binary Neural Network (arXiv 2110.05185)",
        activation_binarizer="dysign",
        activation="dyprelu",
        shortcuts=True,
        schedule=two_stages(),
        distill="distributional",
    )
)
