"""The rows of the ablation: the Bulat ladder, the other recipes, and the schedule and
distillation questions.

Every row is a :class:`~binarize.recipes.Recipe` built with the public API only
(``binarize.recipes.get(name).replace(...)``, the flat keywords of ``binarize.recipes.KEYWORDS``),
so what a row measures is exactly what a user gets from ``binarize.convert(model, recipe)``.

The ladder starts from the most naive binarization and adds one technique of Bulat et al.
2019 (arXiv 1904.05868) per rung, ending at the registered ``bulat`` recipe:

1. sign with a straight-through estimator (clipped: d sign(x)/dx := 1{|x| <= 1}), the model's
   ReLUs kept, one all-binary stage, cross-entropy on the labels. The binary convs of a
   ResNet read ReLU outputs, and sign(relu(x)) = +1 everywhere (sign(0) = +1), so this rung
   measures what the float stem, the shortcuts, the 1x1 projections and the classifier do
   with binary convs that see a constant input;
2. + the ReLUs that feed binary layers swapped for PReLU (negative inputs survive the sign);
3. + reverse-order two-stage training: binary activations with float weights for the first
   half of the steps (conv weight decay 1e-5), then both binary (decay 0);
4. + progressive quantization: the sign's forward is tanh(lambda x) with lambda raised
   geometrically from 1 to 1024 inside each stage, and its backward lambda (1 - tanh^2);
5. + Hinton distillation from the float teacher (temperature 4, plus the label loss): the
   ``bulat`` recipe itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from binarize import recipes
from binarize.recipes import Recipe
from binarize.schedule import ProgressiveRamp, Schedule

ONE_STAGE = recipes.one_stage()  # activations and weights binary from the first step
TWO_STAGES = Schedule()  # activations first (decay 1e-5), then weights too (decay 0)


@dataclass(frozen=True)
class Row:
    """One line of a results table.

    Attributes:
        name: what the table shows.
        group: "ladder", "recipe", "schedule" or "distillation" (the last two are the
            questions asked on one dataset only, ``QUESTIONS``).
        recipe: the recipe the binary network is converted with.
        budget: "short" (the base number of epochs) or "long" (``--long-factor`` times it).
    """

    name: str
    group: str
    recipe: Recipe
    budget: str = "short"


def ladder() -> list[Row]:
    """The five rungs, each one change from the rung before (see the module docstring)."""
    naive = recipes.get("bulat").replace(
        activation_binarizer="ste", activation=None, schedule=ONE_STAGE, distill=None
    )
    prelu = naive.replace(activation="prelu")
    two_stages = prelu.replace(schedule=TWO_STAGES)
    progressive = two_stages.replace(
        activation_binarizer="progressive",
        schedule=TWO_STAGES.replace(progressive=ProgressiveRamp()),
    )
    distilled = progressive.replace(
        distill="kd", distill_options={"temperature": 4.0, "label_weight": 1.0}
    )
    return [
        Row("1 sign+STE, ReLU kept", "ladder", naive),
        Row("2 + PReLU for ReLU", "ladder", prelu),
        Row("3 + two stages", "ladder", two_stages),
        Row("4 + progressive lambda", "ladder", progressive),
        Row("5 + distillation (= bulat)", "ladder", distilled),
    ]


def other_recipes() -> list[Row]:
    """The other registered recipes, each with its own schedule and loss."""
    names = ("xnor", "bireal", "reactnet", "dybnn")
    return [Row(name, "recipe", recipes.get(name)) for name in names]


def schedule_question() -> list[Row]:
    """ReActNet and DyBNN with one stage and with two, at the short and long budgets.

    Both schedules, and the papers' distributional loss from the float teacher, are spelled
    out (not read from the registered recipe), so a row means the same thing whichever
    schedule and loss the recipe registers as its defaults.
    """
    rows = []
    for name in ("reactnet", "dybnn"):
        recipe = recipes.get(name).replace(distill="distributional")
        for label, schedule in (("one stage", ONE_STAGE), ("two stages", TWO_STAGES)):
            variant = recipe.replace(schedule=schedule)
            rows.append(Row(f"{name} {label}", "schedule", variant))
            rows.append(Row(f"{name} {label}", "schedule", variant, "long"))
    return rows


def distillation_question() -> list[Row]:
    """ReActNet and DyBNN (one stage) trained on the labels only, at both budgets: against the
    schedule question's "one stage" rows (the papers' distributional loss from the float
    teacher), this says what the teacher's signal is worth. The registered recipes' own rows
    (:func:`other_recipes`, labels since this question's answer) are these runs, read from
    the cache."""
    rows = []
    for name in ("reactnet", "dybnn"):
        variant = recipes.get(name).replace(schedule=ONE_STAGE, distill=None)
        rows.append(Row(f"{name} labels only", "distillation", variant))
        rows.append(Row(f"{name} labels only", "distillation", variant, "long"))
    return rows


QUESTIONS = ("schedule", "distillation")  # row groups asked on `Mode.schedule_datasets` only


def all_rows() -> list[Row]:
    """Every binary row of the ablation, in table order."""
    return [*ladder(), *other_recipes(), *schedule_question(), *distillation_question()]
