"""Recipes: a named pipeline of graph passes, composed of the option objects of those passes.

A :class:`Recipe` says how ``binarize.convert`` rewrites a float model and how
``binarize.finetune`` trains it. It holds one option object per part, each declared and
checked in the module that owns it:

=============  =====================================  =========================================
part           option class                           what it decides
=============  =====================================  =========================================
selection      ``passes.select.LayerSelection``       which convs/linears become binary
binarizer      ``passes.binarize_layers``             activation binarizer and weight scale
               ``.BinarizerOptions``
activations    ``passes.activations``                 what replaces ReLU, and where
               ``.ActivationOptions``
shortcut       ``passes.shortcuts.ShortcutOptions``   Bi-Real shortcuts around binary convs
schedule       ``binarize.schedule.Schedule``         training stages and the lambda ramp
distillation   ``binarize.distill.Distillation``      the fine-tuning loss
=============  =====================================  =========================================

Five recipes are registered, after their papers (the operators' math is in docs/OPERATORS.md):

========  ===============  ========  ===================  =========  ===========  ==============
recipe    binarizer        scale     activation (scope)   shortcuts  stages       distillation
========  ===============  ========  ===================  =========  ===========  ==============
xnor      ste              attached  dropped (inputs)     no         1            none
bireal    approx           detached  dropped (binary)     yes        1            none
bulat     progressive      detached  PReLU (binary)       no         2 + ramp     Hinton KD
reactnet  rsign (approx)   detached  RPReLU (binary)      yes        1 (paper 2)  labels (paper:
                                                                                 distributional)
dybnn     dysign (approx)  detached  DyPReLU (binary)     yes        1 (paper 2)  labels (paper:
                                                                                 distributional)
========  ===============  ========  ===================  =========  ===========  ==============

Defaults from our measurements: ReActNet and DyBNN train in one all-binary stage, not the
papers' two (binary activations with float weights for the first half, then both binary;
``two_stages()``). examples/classification/RESULTS.md measured it on Fashion-MNIST
(``resnet_small``, 4000 images, 3 seeds, two minus one stage, ± standard error): at 2
epochs reactnet -1.28 ± 1.39 and dybnn -1.05 ± 0.85 points, at 6 epochs -0.85 ± 0.54 and
-0.62 ± 0.39; the quickstart (40000 images, 4 epochs, one seed) dybnn -0.5. Every
comparison favours one stage; none alone is beyond twice its standard error, their mean
(-0.95 ± 0.44) is. The papers' ImageNet budgets (hundreds of epochs) are far longer than ours:
pass ``schedule=recipes.two_stages()`` to train as they did. ``bulat`` keeps its paper's
two stages and ramp, which lose at these budgets (see its comment below).

ReActNet and DyBNN also train on the labels (cross-entropy), not on the papers'
distributional loss from the float teacher (``distill="distributional"`` restores it). The
same ablation, labels minus distributional, one stage: at 2 epochs reactnet -0.85 ± 1.25
(noise) and dybnn +1.63 ± 0.78, at 6 epochs +4.33 ± 0.78 and +4.70 ± 0.47 points. The
distributional loss makes the student imitate its teacher, so a student that could pass a
short-trained teacher (3 epochs, 76.5%) stays below it: dybnn on the labels reaches 79.1%.
From a stronger teacher (9 epochs, 84.3%; dybnn, 6 epochs, 3 seeds) the two are within noise
(labels 80.02 ± 0.93, distributional 79.62 ± 0.59). Never worse in our runs, and an epoch
without the teacher's forward pass costs a third to a half as much.

Derive one with ``get("dybnn").replace(shortcuts=False)`` (or pass the same keywords to
``convert``): the flat keywords users write (:data:`KEYWORDS`) each set one field of one part;
``recipe.shortcuts`` and the other flat names read them back. Or build a :class:`Recipe` from
option objects and :func:`register` it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from binarize.distill import Distillation
from binarize.schedule import ProgressiveRamp, Schedule, Stage
from operators.errors import BinarizeError, ConversionError
from passes.activations import ActivationOptions, SwapActivations
from passes.base import GraphPass
from passes.binarize_layers import BinarizeLayers, BinarizerOptions
from passes.canonicalize import Canonicalize
from passes.select import LayerSelection, SelectLayers
from passes.shortcuts import AddShortcuts, ShortcutOptions

DEFAULT_PASSES: tuple[str, ...] = (
    "canonicalize",  # one module per activation site, no in-place ops, shapes recorded
    "select",  # decide which convs/linears become binary (reads the canonical graph)
    "binarize_layers",  # swap them for BinaryConv2d/BinaryLinear
    "activations",  # after the swap: the binary region is known
    "shortcuts",  # last: wraps each binary conv, including the activation placement
)

PARTS: dict[str, type] = {
    "selection": LayerSelection,
    "binarizer": BinarizerOptions,
    "activations": ActivationOptions,
    "shortcut": ShortcutOptions,
    "schedule": Schedule,
    "distillation": Distillation,
}
"""The option class of each part of a recipe."""

KEYWORDS: dict[str, tuple[str, str]] = {
    "keep_first": ("selection", "keep_first"),
    "keep_last": ("selection", "keep_last"),
    "keep_grouped": ("selection", "keep_grouped"),
    "keep_projections": ("selection", "keep_projections"),
    "keep_float": ("selection", "keep_float"),
    "binarize": ("selection", "binarize"),
    "activation_binarizer": ("binarizer", "kind"),
    "weight_scale": ("binarizer", "weight_scale"),
    "binarizer_options": ("binarizer", "options"),
    "activation": ("activations", "kind"),
    "activation_init": ("activations", "init"),
    "activation_scope": ("activations", "scope"),
    "activation_options": ("activations", "options"),
    "shortcuts": ("shortcut", "add"),
    "distill": ("distillation", "kind"),
    "distill_options": ("distillation", "options"),
}
"""The flat keywords of :meth:`Recipe.replace` and ``convert(**overrides)``: each is the field
of one part (``activation="prelu"`` is ``recipe.activations.kind``). ``schedule`` is a part
itself (a ``Schedule`` or its config dict)."""


def one_stage() -> Schedule:
    """A single stage with activations and weights binary from the first step, no decay."""
    return Schedule(stages=(Stage("binary", fraction=1.0, weight_decay=0.0),))


def two_stages() -> Schedule:
    """The papers' reverse-order schedule (Bulat 2019, ReActNet): binary activations with
    float weights for the first half of the steps (conv weight decay 1e-5), then both binary
    (decay 0)."""
    return Schedule()


@dataclass(frozen=True)
class Recipe:
    """How to convert and train one kind of binary network.

    Attributes:
        name, description, source: registry key, one line, and the paper it follows.
        passes: pass names in order (keys of :data:`PASSES`).
        selection, binarizer, activations, shortcut, schedule, distillation: the option
            objects of the parts (:data:`PARTS`); ``schedule`` may be given as
            ``Schedule.from_config``'s dict.

    The flat keywords (:data:`KEYWORDS`) read as attributes: ``recipe.activation`` is
    ``recipe.activations.kind``, ``recipe.shortcuts`` is ``recipe.shortcut.add``.
    """

    name: str
    description: str
    source: str
    passes: tuple[str, ...] = DEFAULT_PASSES
    selection: LayerSelection = field(default_factory=LayerSelection)
    binarizer: BinarizerOptions = field(default_factory=BinarizerOptions)
    activations: ActivationOptions = field(default_factory=ActivationOptions)
    shortcut: ShortcutOptions = field(default_factory=ShortcutOptions)
    schedule: Schedule = field(default_factory=one_stage)
    distillation: Distillation = field(default_factory=Distillation)

    def __post_init__(self) -> None:
        passes = (self.passes,) if isinstance(self.passes, str) else tuple(self.passes)
        object.__setattr__(self, "passes", passes)
        unknown = [name for name in passes if name not in PASSES]
        if unknown:
            raise ConversionError(
                f"recipe {self.name!r}: passes {unknown} are not among {list(PASSES)}."
            )
        if not isinstance(self.schedule, Schedule):
            schedule = self._checked("schedule", Schedule.from_config, self.schedule)
            object.__setattr__(self, "schedule", schedule)
        for part, kind in PARTS.items():
            value = getattr(self, part)
            if not isinstance(value, kind):
                keywords = [key for key, (owner, _) in KEYWORDS.items() if owner == part]
                close = difflib.get_close_matches(part, keywords, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConversionError(
                    f"recipe {self.name!r}: {part} must be a {kind.__name__}, got {value!r}."
                    f"{hint} What to do: build a {kind.__name__}, or use its flat keywords "
                    f"{keywords}."
                )

    def __getattr__(self, name: str) -> Any:
        """The flat keywords read through to their part (``recipe.activation``)."""
        if name in KEYWORDS:
            part, attribute = KEYWORDS[name]
            if part in self.__dict__:
                return getattr(self.__dict__[part], attribute)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some parts or flat keywords changed, e.g. ``replace(shortcuts=False)``.

        Raises:
            ConversionError: a name is neither a recipe field nor a flat keyword (with a
                did-you-mean), or the option class that owns a value rejects it.
        """
        fields = [item.name for item in dataclasses.fields(self)]
        known = [*fields, *KEYWORDS]
        unknown = [name for name in changes if name not in known]
        if unknown:
            # The flat keywords are what users write: suggest one of them before a part.
            hints = {
                name: difflib.get_close_matches(name, KEYWORDS, n=1)
                or difflib.get_close_matches(name, fields, n=1)
                for name in unknown
            }
            close = "; ".join(
                f"{name!r}: did you mean {hint[0]!r}?" for name, hint in hints.items() if hint
            )
            raise ConversionError(
                f"unknown recipe option(s) {unknown} for recipe {self.name!r}. {close} "
                f"The options are {known}."
            )
        direct = {name: value for name, value in changes.items() if name in fields}
        by_part: dict[str, dict[str, Any]] = {}
        for keyword, value in changes.items():
            if keyword in KEYWORDS:
                part, attribute = KEYWORDS[keyword]
                by_part.setdefault(part, {})[attribute] = value
        for part, values in by_part.items():
            given = ", ".join(
                f"{key}={value!r}"
                for key, value in changes.items()
                if key in KEYWORDS and KEYWORDS[key][0] == part
            )
            base = direct.get(part, getattr(self, part))
            direct[part] = self._checked(given, dataclasses.replace, base, **values)
        return dataclasses.replace(self, **direct)

    def _checked(self, given: str, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``build(*args, **kwargs)``, with the option class's error re-raised as a
        ConversionError that names this recipe and what was ``given``."""
        try:
            return build(*args, **kwargs)
        except BinarizeError as error:
            raise ConversionError(f"recipe {self.name!r}: {given}: {error}") from error

    def build_passes(self, example_inputs: tuple[Any, ...]) -> list[GraphPass]:
        """The pipeline: one pass object per name in ``passes`` (those the recipe turns off,
        such as ``shortcuts`` with ``shortcuts=False``, are left out)."""
        built = (PASSES[name](self, example_inputs) for name in self.passes)
        return [graph_pass for graph_pass in built if graph_pass is not None]


PassBuilder = Callable[[Recipe, tuple[Any, ...]], GraphPass | None]

PASSES: dict[str, PassBuilder] = {
    "canonicalize": lambda recipe, inputs: Canonicalize(inputs),
    "select": lambda recipe, inputs: SelectLayers(recipe.selection),
    "binarize_layers": lambda recipe, inputs: BinarizeLayers(recipe.binarizer),
    "activations": lambda recipe, inputs: (
        None if recipe.activations.kind is None else SwapActivations(recipe.activations)
    ),
    "shortcuts": lambda recipe, inputs: AddShortcuts() if recipe.shortcut.add else None,
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


# Two stages (Bulat 2019; ReActNet): activations binary with float weights, then both, with
# ReActNet's conv weight decay 1e-5 then 0 -- the Schedule defaults. Bulat's progressive
# tanh(lambda x) ramp goes geometrically from 1 to 1024 within each stage.
# bulat stays as its paper trains it, although at our short budgets its parts lose: on
# Fashion-MNIST at 2 epochs (examples/classification/RESULTS.md, 3 seeds, change over the rung
# before, ± standard error) two stages -1.55 ± 1.26 (noise), the progressive ramp -8.52 ± 1.77
# and KD on top -4.33 ± 1.96 points; sign+STE with PReLU and one stage is 14.4 points better.
# Dropping them would make it another recipe; the ramp is meant for long budgets, which we
# have not measured.
register(
    Recipe(
        name="xnor",
        description="XNOR-Net: sign with clipped STE, weights alpha*sign(W) with a gradient "
        "through alpha, ReLUs feeding binary layers dropped, no added shortcuts.",
        source="Rastegari et al. 2016, XNOR-Net (arXiv 1603.05279)",
        binarizer=BinarizerOptions("ste", weight_scale="attached"),
        activations=ActivationOptions("identity", scope="inputs"),
    )
)
register(
    Recipe(
        name="bireal",
        description="Bi-Real Net: approx-sign gradient, detached scale, a real-valued shortcut "
        "around every binary conv, no activation in the binary part.",
        source="Liu et al. 2018, Bi-Real Net (arXiv 1808.00278)",
        binarizer=BinarizerOptions("approx"),
        activations=ActivationOptions("identity"),
        shortcut=ShortcutOptions(add=True),
    )
)
register(
    Recipe(
        name="bulat",
        description="Bulat 2019: progressive tanh(lambda x) -> sign, PReLU for ReLU, reverse-order "
        "two-stage training, Hinton KD from the float teacher.",
        source="Bulat et al. 2019, Improved training of binary networks (arXiv 1904.05868)",
        binarizer=BinarizerOptions("progressive"),
        activations=ActivationOptions("prelu"),
        schedule=Schedule(progressive=ProgressiveRamp()),
        distillation=Distillation("kd", {"temperature": 4.0, "label_weight": 1.0}),
    )
)
register(
    Recipe(
        name="reactnet",
        description="ReActNet: RSign and RPReLU (learnable shifts), Bi-Real shortcuts, one "
        "all-binary stage (the paper's two: two_stages()), trained on the labels (the paper's "
        "distributional loss from the float teacher: distill='distributional').",
        source="Liu et al. 2020, ReActNet (arXiv 2003.03488)",
        binarizer=BinarizerOptions("rsign"),
        activations=ActivationOptions("rprelu"),
        shortcut=ShortcutOptions(add=True),
        schedule=one_stage(),  # measured better than two_stages() here: module docstring
        distillation=Distillation(),  # labels: measured >= distributional, module docstring
    )
)
register(
    Recipe(
        name="dybnn",
        description="DyBNN: ReActNet with per-sample thresholds, DySign and DyPReLU (one "
        "all-binary stage on the labels, as reactnet).",
        source="Zhang et al. 2021, Dynamic Binary Neural Network (arXiv 2110.05185)",
        binarizer=BinarizerOptions("dysign"),
        activations=ActivationOptions("dyprelu"),
        shortcut=ShortcutOptions(add=True),
        schedule=one_stage(),
        distillation=Distillation(),
    )
)
