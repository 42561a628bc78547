"""binarize.recipes: the registry, derived recipes, the flat keywords, validation by the option
classes that own each option, and the pass pipeline."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from binarize import recipes
from binarize.distill import Distillation
from binarize.recipes import KEYWORDS, PARTS, Recipe
from binarize.schedule import Schedule
from operators.errors import ConversionError, TrainingError
from passes.activations import ActivationOptions, SwapActivations
from passes.binarize_layers import BinarizeLayers, BinarizerOptions
from passes.canonicalize import Canonicalize
from passes.select import LayerSelection, SelectLayers
from passes.shortcuts import AddShortcuts, ShortcutOptions

# (binarizer, weight scale, activation, shortcuts, stages, progressive, distill): XNOR-Net
# (clipped-STE sign, alpha with a gradient, no ReLU before a binary layer), Bi-Real (approx
# sign, real shortcuts, no activation), Bulat 2019 (progressive tanh -> sign, PReLU, two
# stages, KD), ReActNet (RSign, RPReLU, shortcuts, distributional loss), DyBNN (ReActNet with
# DySign and DyPReLU). ReActNet and DyBNN train in one stage on the labels here, not the
# papers' two stages with the distributional loss: the recipes module docstring gives the
# measurements behind those defaults.
EXPECTED = {
    "xnor": ("ste", "attached", "identity", False, 1, False, None),
    "bireal": ("approx", "detached", "identity", True, 1, False, None),
    "bulat": ("progressive", "detached", "prelu", False, 2, True, "kd"),
    "reactnet": ("rsign", "detached", "rprelu", True, 1, False, None),
    "dybnn": ("dysign", "detached", "dyprelu", True, 1, False, None),
}


def test_registered_recipes_follow_the_papers() -> None:
    assert recipes.names() == list(EXPECTED)
    for name, expected in EXPECTED.items():
        recipe = recipes.get(name)
        schedule = recipe.schedule
        assert isinstance(schedule, Schedule)
        actual = (recipe.activation_binarizer, recipe.weight_scale, recipe.activation,
                  recipe.shortcuts, len(schedule.stages), schedule.progressive is not None,
                  recipe.distill)  # fmt: skip
        assert actual == expected, name
        assert recipe.description and "arXiv" in recipe.source


def test_two_stage_schedules_binarize_activations_first() -> None:
    for stages in (recipes.get("bulat").schedule.stages, recipes.two_stages().stages):
        assert [(s.activations, s.weights, s.weight_decay) for s in stages] == [
            (True, False, 1e-5),
            (True, True, 0.0),
        ]
    for name in ("reactnet", "dybnn"):  # one stage, all binary from the first step
        stages = recipes.get(name).schedule.stages
        assert [(s.activations, s.weights, s.weight_decay) for s in stages] == [(True, True, 0.0)]


def test_get_returns_a_copy() -> None:
    recipe = recipes.get("bulat")
    recipe.distillation.options["temperature"] = 1.0
    recipe.schedule.step = 7
    fresh = recipes.get("bulat")
    assert fresh.distill_options["temperature"] == 4.0 and fresh.schedule.step == -1


def test_replace_changes_fields_and_normalises_lists() -> None:
    base = recipes.get("reactnet")
    derived = base.replace(shortcuts=False, keep_float=["layer4.1.conv2"], binarize="fc")
    assert derived.shortcuts is False and base.shortcuts is True
    assert derived.keep_float == ("layer4.1.conv2",) and derived.binarize == ("fc",)
    assert derived.selection == LayerSelection(keep_float=("layer4.1.conv2",), binarize=("fc",))
    assert derived.binarizer is base.binarizer  # parts no keyword touched are shared as they are
    with pytest.raises(ConversionError, match=r"did you mean 'activation_init'"):
        base.replace(activation_int=0.0)


def test_every_flat_keyword_sets_one_field_of_its_part() -> None:
    """KEYWORDS is the one table: each keyword names a field that exists on its part's class,
    replace() writes it there and the flat attribute reads it back."""
    base = recipes.get("dybnn")
    values = {"keep_first": False, "keep_last": False, "keep_grouped": False,
              "keep_projections": False, "keep_float": ("conv3",), "binarize": ("fc",),
              "activation_binarizer": "rsign", "weight_scale": "learnable",
              "binarizer_options": {"reduction": 4}, "activation": "rprelu",
              "activation_init": 0.5, "activation_scope": "all",
              "activation_options": {"min_hidden": 2}, "shortcuts": False, "distill": "mse",
              "distill_options": {"temperature": 2.0}}  # fmt: skip
    assert set(values) == set(KEYWORDS)
    for keyword, value in values.items():
        part, attribute = KEYWORDS[keyword]
        assert attribute in {f.name for f in dataclasses.fields(PARTS[part])}, keyword
        assert getattr(base, keyword) != value, keyword  # so the check below can fail
        derived = base.replace(**{keyword: value})
        assert getattr(getattr(derived, part), attribute) == value, keyword
        assert getattr(derived, keyword) == value, keyword
    with pytest.raises(AttributeError, match="no attribute 'activation_int'"):
        _ = base.activation_int


@pytest.mark.parametrize(
    ("keyword", "value", "owner"),
    [("activation_binarizer", "sgn", r"BinarizerOptions\.kind 'sgn'"),
     ("weight_scale", "mean", r"BinarizerOptions\.weight_scale 'mean'"),
     ("binarizer_options", {"depth": 2}, r"BinarizerOptions\.options \{'depth': 2\}"),
     ("activation", "gelu", r"ActivationOptions\.kind 'gelu'"),
     ("activation_init", "0.1", r"ActivationOptions\.init must be a number"),
     ("activation_scope", "most", r"ActivationOptions\.scope 'most'"),
     ("activation_options", {"depth": 2}, r"ActivationOptions\.options \{'depth': 2\}"),
     ("keep_first", "yes", r"LayerSelection\.keep_first must be True or False"),
     ("keep_float", [3], r"LayerSelection\.keep_float entry 3"),
     ("binarize", ["layer(1"], r"LayerSelection\.binarize entry 'layer\(1'.*regular"),
     ("shortcuts", 1, r"ShortcutOptions\.add must be True or False"),
     ("distill", "hinton", r"Distillation\.kind 'hinton'"),
     ("distill_options", {"tau": 2}, r"Distillation\.options \{'tau': 2\}"),
     ("schedule", {"stages": []}, r"schedule: a schedule needs at least one stage"),
     ("passes", ("canonicalize", "fuse"), r"passes \['fuse'\] are not among")],
)  # fmt: skip
def test_invalid_values_are_rejected_by_their_option_class(
    keyword: str, value: object, owner: str
) -> None:
    """The recipe names itself and the keyword; the message after it is the option class's."""
    with pytest.raises(ConversionError, match=rf"recipe 'dybnn': (?:{keyword}=.*: )?{owner}"):
        recipes.get("dybnn").replace(**{keyword: value})


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [(lambda: BinarizerOptions("sgn"), ConversionError, r"^BinarizerOptions\.kind 'sgn' is not"),
     (lambda: BinarizerOptions("ste", options={"backward": "ste"}), ConversionError,
      r"^BinarizerOptions\.options .*SignSTE takes none"),
     (lambda: ActivationOptions("prelu", options={"reduction": 4}), ConversionError,
      r"^ActivationOptions\.options .*PReLU takes none"),
     (lambda: ActivationOptions(init=True), ConversionError, r"^ActivationOptions\.init must"),
     (lambda: LayerSelection(keep_float=("a",), binarize="a"), ConversionError,
      r"^LayerSelection: 'a' is listed in both"),
     (lambda: ShortcutOptions(add="no"), ConversionError, r"^ShortcutOptions\.add must"),
     (lambda: Distillation("kd", {"temperature": 2.0, "alpha": 1}), TrainingError,
      r"^Distillation\.options .*accepts \['temperature', 'label_weight'\]")],
)  # fmt: skip
def test_each_option_class_checks_its_own_fields(build, error, message) -> None:
    with pytest.raises(error, match=message):
        build()


def test_option_classes_accept_what_the_operators_accept() -> None:
    assert BinarizerOptions("dysign", options={"reduction": 4}).options == {"reduction": 4}
    assert ActivationOptions("dyprelu", options={"min_hidden": 2}).options == {"min_hidden": 2}
    assert LayerSelection(keep_float="layer1").keep_float == ("layer1",)


def test_a_part_given_a_flat_value_suggests_the_keyword() -> None:
    with pytest.raises(ConversionError, match=r"shortcut must be a ShortcutOptions.*'shortcuts'"):
        recipes.get("dybnn").replace(shortcut=False)


def test_register_a_custom_recipe() -> None:
    recipe = Recipe(name="test-only", description="d", source="s",
                    activations=ActivationOptions("rprelu"), schedule={"stages": None})  # fmt: skip
    recipes.register(recipe)
    try:
        assert recipes.get("test-only") == recipe
        assert recipe.activation == "rprelu" and len(recipe.schedule.stages) == 2
        with pytest.raises(ConversionError, match="already registered"):
            recipes.register(recipe)
        recipes.register(recipe.replace(description="e"), overwrite=True)
        assert recipes.get("test-only").description == "e"
    finally:
        recipes._REGISTRY.pop("test-only")
    with pytest.raises(ConversionError, match=r"unknown recipe 'test-only'.*xnor"):
        recipes.get("test-only")


def test_build_passes_follows_the_recipe() -> None:
    x = (torch.randn(1, 3, 8, 8),)
    kinds = [type(p) for p in recipes.get("dybnn").build_passes(x)]
    assert kinds == [Canonicalize, SelectLayers, BinarizeLayers, SwapActivations, AddShortcuts]
    passes = recipes.get("bulat").replace(activation=None).build_passes(x)
    assert [type(p) for p in passes] == [Canonicalize, SelectLayers, BinarizeLayers]
    xnor = recipes.get("xnor")
    layers = next(p for p in xnor.build_passes(x) if type(p) is BinarizeLayers)
    assert layers.options is xnor.binarizer
    assert (layers.options.kind, layers.options.weight_scale) == ("ste", "attached")
    select = next(p for p in xnor.build_passes(x) if type(p) is SelectLayers)
    assert select.selection is xnor.selection
