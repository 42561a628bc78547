"""binarize.convert and BinaryModel: the API contract, overrides, and the errors it raises."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binarize import recipes
from binarize.convert import BinaryModel, convert
from binarize.models import SmallCNN
from binarize.schedule import Schedule
from operators import BinaryConv2d, set_binarization
from operators.errors import ConversionError

x16 = torch.randn(2, 1, 16, 16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SharedAndSpelled(nn.Module):
    """A shared ReLU module called twice, F.relu(inplace=True), torch.relu, x.relu(), ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1)
                                   for i in range(6))  # fmt: skip
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        x = self.act(c[0](x))
        x = self.act(c[1](x))
        x = F.relu(c[2](x), inplace=True)
        x = torch.relu(c[3](x))
        x = c[4](x).relu()
        x = F.relu6(c[5](x))
        return self.head(x.mean((2, 3)))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.body = Branchy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv(x))


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x.flip(1)
        return x


def test_every_spelling_is_swapped_per_call_site() -> None:
    model = SharedAndSpelled()
    bnn = convert(model, "bulat", x16)
    prelus = [m for m in bnn.student.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 6 and len({id(m) for m in prelus}) == 6
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in bnn.student.modules())
    assert sum(isinstance(m, BinaryConv2d) for m in bnn.student.modules()) == 5
    bnn(x16).sum().backward()
    assert all(p.grad is not None for p in bnn.parameters())


def test_the_original_model_is_never_modified() -> None:
    model = SharedAndSpelled()
    before = copy.deepcopy(model.state_dict())
    modules_before = [(name, type(m)) for name, m in model.named_modules()]
    convert(model, "dybnn", x16)
    assert [(name, type(m)) for name, m in model.named_modules()] == modules_before
    assert model.act.inplace is True
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert model.training


def test_binary_model_holds_the_teacher_outside_parameters_and_state_dict() -> None:
    model = SmallCNN()
    bnn = convert(model, "reactnet", x16)
    assert isinstance(bnn, BinaryModel)
    assert bnn.teacher is not None and bnn.teacher is not model
    assert not bnn.teacher.training
    assert not any(p.requires_grad for p in bnn.teacher.parameters())
    teacher_ids = {id(p) for p in bnn.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in bnn.parameters()}
    assert all(key.startswith("student.") for key in bnn.state_dict())
    bnn.train()
    assert bnn.student.training and not bnn.teacher.training
    bnn.to(torch.float64)
    assert next(bnn.teacher.parameters()).dtype == torch.float64
    assert bnn(x16.double()).dtype == torch.float64
    assert torch.equal(bnn.teacher(x16.double()), model.double().eval()(x16.double()))


def test_no_teacher_schedule_and_recipe_are_attached() -> None:
    bnn = convert(SmallCNN(), "bulat", (x16,), teacher=False, activation_init=0.1)
    assert bnn.teacher is None
    assert bnn.recipe.name == "bulat" and bnn.recipe.activation_init == 0.1
    assert isinstance(bnn.schedule, Schedule)
    assert [stage.name for stage in bnn.schedule.stages] == ["activations", "weights"]
    assert bnn.schedule.progressive is not None


def test_forward_is_the_students() -> None:
    bnn = convert(SmallCNN(), "xnor", [x16])  # a list of inputs works like a tuple
    assert torch.equal(bnn(x16), bnn.student(x16))


def test_overrides_reach_the_passes() -> None:
    bnn = convert(SmallCNN(), "dybnn", x16, activation="prelu", shortcuts=False,
                  weight_scale="learnable", keep_float=["conv3"])  # fmt: skip
    layers = [m for m in bnn.student.modules() if isinstance(m, BinaryConv2d)]
    assert len(layers) == 1 and layers[0].weight_scale == "learnable"
    assert isinstance(bnn.student.get_submodule("conv3"), nn.Conv2d)
    assert any(isinstance(m, nn.PReLU) for m in bnn.student.modules())
    everything = convert(SmallCNN(), "dybnn", x16, binarize=["conv1", "fc"])
    assert isinstance(everything.student.get_submodule("conv1"), BinaryConv2d)


def test_a_recipe_object_can_be_passed() -> None:
    recipe = recipes.get("reactnet").replace(name="mine", shortcuts=False)
    bnn = convert(SmallCNN(), recipe, x16)
    assert bnn.recipe is recipe


def test_rewrite_is_exact_with_binarizers_off() -> None:
    """``activation_init=0.0`` makes every DyPReLU a ReLU at conversion, and
    ``shortcuts=False`` adds nothing, so with binarizers off only the rewrite is left."""
    model = SmallCNN().eval()
    bnn = convert(model, "dybnn", x16, activation_init=0.0, shortcuts=False)
    set_binarization(bnn, activations=False, weights=False)
    assert torch.equal(bnn.eval()(x16), model(x16))


def test_untraceable_model_names_module_line_and_what_to_do() -> None:
    with pytest.raises(ConversionError) as info:
        convert(DataDependent(), "dybnn", x16)
    message = str(info.value)
    assert "module 'body' (Branchy)" in message and "if x.mean() > 0:" in message
    assert "leaf_modules=['body']" in message
    # a user leaf is opaque to the runtime too: it converts, but only without the export check
    bnn = convert(DataDependent(), "dybnn", x16, leaf_modules=["body"], export_check="off")
    assert bnn(x16).shape == (2, 4, 14, 14)


def test_unknown_layer_kind_to_binarize_names_the_module() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Conv2d(4, 2, 1))
    with pytest.raises(ConversionError, match=r"layer '1'.*ConvTranspose2d has no binary"):
        convert(model, "xnor", x16, binarize=["1"])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"recipe": "xnr"}, r"unknown recipe 'xnr'.*'xnor'"),
        ({"shortcutz": False}, r"option\(s\) \['shortcutz'\].*did you mean 'shortcuts'"),
        ({"shortcut": False}, r"shortcut must be a ShortcutOptions.*Did you mean 'shortcuts'"),
        ({"activation": "gelu"}, r"activation='gelu': ActivationOptions\.kind 'gelu' is not"),
        ({"example_inputs": None}, r"needs example_inputs"),
        ({"example_inputs": torch.randn(2, 3, 16, 16)}, r"does not run on (?s:.*)node %conv1"),
        ({"binarizer_options": {"depth": 2}}, r"binarizer_options=.*\['depth'\] are not"),
        ({"activation_options": {"depth": 2}}, r"activation_options=.*DyPReLU accepts"),
        ({"binarizer_options": {"activation": "gelu"}}, r"'dysign' binarizer rejects them"),
        ({"activation_options": {"activation": "gelu"}}, r"'dyprelu' rejects them"),
    ],
)  # fmt: skip
def test_bad_arguments_are_reported(kwargs: dict[str, object], pattern: str) -> None:
    arguments: dict[str, object] = {"recipe": "dybnn", "example_inputs": x16, **kwargs}
    with pytest.raises(ConversionError, match=pattern):
        convert(SmallCNN(), **arguments)


def test_convert_needs_a_module() -> None:
    with pytest.raises(ConversionError, match=r"convert needs a torch.nn.Module, got a function"):
        convert(lambda x: x, "xnor", x16)
    with pytest.raises(ConversionError, match=r"got a Tensor"):
        convert(SmallCNN()(x16), "xnor", x16)


def test_checkpoints_restore_into_a_fresh_conversion_and_deepcopy_works() -> None:
    model = SmallCNN()
    trained = convert(model, "dybnn", x16)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    fresh = convert(model, "dybnn", x16)
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.eval()(x16), trained.eval()(x16))
    twin = copy.deepcopy(trained)
    assert twin.teacher is not trained.teacher and torch.equal(twin(x16), trained(x16))
