"""binarize.recipes: the registry, derived recipes, validation and the pass pipeline."""

from __future__ import annotations

import pytest
import torch

from binarize import recipes
from binarize.errors import ConversionError
from binarize.recipes import Recipe
from binarize.schedule import Schedule
from passes.activations import SwapActivations
from passes.binarize_layers import BinarizeLayers
from passes.canonicalize import Canonicalize
from passes.select import SelectLayers
from passes.shortcuts import AddShortcuts

# (binarizer, weight scale, activation, shortcuts, stages, progressive, distill), PAPERS.md
EXPECTED = {
    "xnor": ("ste", "attached", "identity", False, 1, False, None),
    "bireal": ("approx", "detached", "identity", True, 1, False, None),
    "bulat": ("progressive", "detached", "prelu", False, 2, True, "kd"),
    "reactnet": ("rsign", "detached", "rprelu", True, 2, False, "distributional"),
    "dybnn": ("dysign", "detached", "dyprelu", True, 2, False, "distributional"),
}


def test_registered_recipes_follow_the_papers() -> None:
    assert recipes.names() == list(EXPECTED)
    for name, expected in EXPECTED.items():
        recipe = recipes.get(name)
        schedule = Schedule.from_config(recipe.schedule)
        actual = (recipe.activation_binarizer, recipe.weight_scale, recipe.activation,
                  recipe.shortcuts, len(schedule.stages), schedule.progressive is not None,
                  recipe.distill)  # fmt: skip
        assert actual == expected, name
        assert recipe.description and "arXiv" in recipe.source


def test_two_stage_recipes_binarize_activations_first() -> None:
    stages = Schedule.from_config(recipes.get("reactnet").schedule).stages
    assert [(s.activations, s.weights, s.weight_decay) for s in stages] == [
        (True, False, 1e-5),
        (True, True, 0.0),
    ]


def test_get_returns_a_copy() -> None:
    recipe = recipes.get("dybnn")
    recipe.schedule["stages"].clear()
    assert recipes.get("dybnn").schedule["stages"]


def test_replace_changes_fields_and_normalises_lists() -> None:
    base = recipes.get("reactnet")
    derived = base.replace(shortcuts=False, keep_float=["layer4.1.conv2"], binarize="fc")
    assert derived.shortcuts is False and base.shortcuts is True
    assert derived.keep_float == ("layer4.1.conv2",) and derived.binarize == ("fc",)
    with pytest.raises(ConversionError, match=r"did you mean 'activation_init'"):
        base.replace(activation_int=0.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("activation_binarizer", "sgn"), ("weight_scale", "mean"), ("activation", "gelu"),
     ("activation_scope", "most"), ("distill", "hinton"), ("passes", ("canonicalize", "fuse"))],
)  # fmt: skip
def test_invalid_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ConversionError, match=f"recipe 'dybnn': {field}"):
        recipes.get("dybnn").replace(**{field: value})


def test_register_a_custom_recipe() -> None:
    recipe = Recipe(name="test-only", description="d", source="s", activation="rprelu")
    recipes.register(recipe)
    try:
        assert recipes.get("test-only") == recipe
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
    layers = next(p for p in recipes.get("xnor").build_passes(x) if type(p) is BinarizeLayers)
    assert (layers.activation_binarizer, layers.weight_scale) == ("ste", "attached")
