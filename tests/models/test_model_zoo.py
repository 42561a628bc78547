"""Model definitions: shapes, torchvision parameter counts and names, fx tracing, backward."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
from torch import nn

from binarize import models

# name -> (constructor kwargs, input shape, output shape); inputs kept small for speed.
CASES = {
    "resnet18": ({"num_classes": 7}, (2, 3, 64, 64), (2, 7)),
    "resnet34": ({"num_classes": 7, "in_channels": 1}, (2, 1, 32, 32), (2, 7)),
    "resnet50": ({"num_classes": 7}, (2, 3, 32, 32), (2, 7)),
    "resnet_small": ({}, (2, 1, 28, 28), (2, 10)),
    "mobilenet_v1": ({"num_classes": 5, "width_mult": 0.25}, (2, 3, 64, 64), (2, 5)),
    "hourglass": ({"num_joints": 4, "width": 16, "depth": 2}, (2, 3, 32, 32), (2, 8, 8, 8)),
    "small_cnn": ({}, (2, 1, 28, 28), (2, 10)),
    "mlp": ({"in_features": 3 * 8 * 8, "hidden": (32,)}, (4, 3, 8, 8), (4, 10)),
    "mobilenet_v3_small": ({"num_classes": 5, "width_mult": 0.25}, (2, 3, 32, 32), (2, 5)),
    "efficientnet_b0": (
        {"num_classes": 5, "width_mult": 0.25, "depth_mult": 0.25},
        (2, 3, 32, 32),
        (2, 5),
    ),
    "shufflenet_v2": (
        {"num_classes": 5, "in_channels": 1, "width_mult": 0.25, "repeats": (2, 1, 1)},
        (2, 1, 32, 32),
        (2, 5),
    ),
    "squeezenet": ({"num_classes": 5, "width_mult": 0.25}, (2, 3, 32, 32), (2, 5)),
    "convnext": ({"num_classes": 5, "width": 8, "depths": (1, 2, 1, 1)}, (2, 3, 32, 32), (2, 5)),
}


def test_registry_lists_every_model_and_rejects_unknown_names():
    assert models.names() == sorted(CASES)
    with pytest.raises(KeyError, match=r"'resnet19'.*resnet18"):
        models.get("resnet19")


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "count"),
    [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)],
)
def test_resnet_parameter_counts_equal_torchvision(name, count):
    assert _count(models.get(name)) == count


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("mobilenet_v3_small", 2_542_856),
        ("efficientnet_b0", 5_288_548),
        ("shufflenet_v2", 2_278_604),
        ("squeezenet", 1_235_496),
        ("convnext", 28_589_128),
    ],
)
def test_modern_nets_at_width_one_have_torchvisions_parameter_counts(name, count):
    # torchvision's mobilenet_v3_small, efficientnet_b0, shufflenet_v2_x1_0, squeezenet1_1 and
    # convnext_tiny at 1000 classes
    assert _count(models.get(name)) == count


def test_mobilenet_v1_parameter_count_matches_the_paper_layout():
    # 4.2 M in Howard et al. 2017, Table 8; 4,231,976 with BN affine parameters.
    assert _count(models.mobilenet_v1()) == 4_231_976


def test_resnet18_state_dict_keys_follow_torchvision():
    keys = set(models.resnet18().state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.num_batches_tracked",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys, key
    assert not any(k.startswith("layer1.0.downsample") for k in keys)
    assert len(keys) == 122  # torchvision resnet18: 62 params + 60 BN buffers
    bottleneck = set(models.resnet50().state_dict())
    assert {
        "layer1.0.conv3.weight",
        "layer1.0.bn3.bias",
        "layer1.0.downsample.0.weight",
    } <= bottleneck


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_shape_backward_and_fx_trace(name):
    kwargs, in_shape, out_shape = CASES[name]
    torch.manual_seed(0)
    model = models.get(name, **kwargs)
    x = torch.randn(in_shape)
    y = model(x)
    assert y.shape == out_shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())

    traced = torch.fx.symbolic_trace(model.eval())
    traced.graph.lint()
    assert torch.allclose(traced(x), model(x), atol=1e-6)


def test_basic_block_calls_its_shared_relu_twice_like_torchvision():
    graph = torch.fx.symbolic_trace(models.resnet18()).graph
    calls = [n.target for n in graph.nodes if n.op == "call_module"]
    assert calls.count("layer1.0.relu") == 2 and calls.count("relu") == 1
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == 8


def test_small_cnn_uses_the_three_functional_relu_forms():
    graph = torch.fx.symbolic_trace(models.SmallCNN()).graph
    relu_calls = [
        (n.op, n.target) for n in graph.nodes if "relu" in str(n.target) and n.op != "call_module"
    ]
    ops = {op for op, _ in relu_calls}
    assert ops == {"call_function", "call_method"} and len(relu_calls) == 3
    f_relu = next(n for n in graph.nodes if n.target is torch.nn.functional.relu)
    assert f_relu.kwargs.get("inplace") is True


def test_resnet_small_fits_28x28_and_keeps_spatial_size_in_the_stem():
    model = models.resnet_small(width=8, blocks=2)
    assert isinstance(model.maxpool, nn.Identity) and model.conv1.stride == (1, 1)
    assert model.stage_names == ["layer1", "layer2", "layer3"] and len(model.layer2) == 2
    features = model.layer3(model.layer2(model.layer1(torch.randn(1, 8, 28, 28))))
    assert features.shape == (1, 32, 7, 7)


def test_hourglass_stacks_are_supervised_separately():
    torch.manual_seed(0)
    model = models.hourglass(num_stacks=3, num_joints=2, depth=1, width=8)
    out = model(torch.randn(1, 3, 16, 16))
    assert out.shape == (1, 6, 4, 4)
    stacks = model.split_stacks(out)
    assert stacks.shape == (1, 3, 2, 4, 4) and torch.equal(stacks[:, 1], out[:, 2:4])
    # The first stack's heatmaps do not depend on the later stacks' heads.
    stacks[:, 0].sum().backward()
    later = model.heads[2].weight.grad
    assert (later is None or not later.any()) and model.heads[0].weight.grad.any()


def test_mlp_children_have_stable_names():
    names = [name for name, _ in models.MLP(in_features=10, hidden=(4, 3)).named_children()]
    assert names == ["flatten", "fc1", "bn1", "relu1", "fc2", "bn2", "relu2", "head"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: models.mobilenet_v1(width_mult=0), "width_mult"),
        (lambda: models.hourglass(depth=0), "depth"),
        (lambda: models.hourglass(num_stacks=0), "num_stacks"),
        (lambda: models.mobilenet_v3_small(width_mult=-1), "width_mult"),
        (lambda: models.efficientnet_b0(depth_mult=0), "depth_mult"),
        (lambda: models.shufflenet_v2(repeats=(1, 0, 1)), "repeats"),
        (lambda: models.squeezenet(width_mult=0), "width_mult"),
        (lambda: models.convnext(depths=(1, 1, 1)), "depths"),
    ],
)
def test_invalid_sizes_are_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_channel_shuffle_interleaves_the_two_halves():
    from binarize.models.shufflenet import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_squeeze_excitation_blocks_gate_the_trunk_with_their_paper_gates():
    v3 = models.mobilenet_v3_small(width_mult=0.25)
    b0 = models.efficientnet_b0(width_mult=0.25, depth_mult=0.25)
    v3_gates = {type(m.scale_activation) for m in v3.modules() if hasattr(m, "scale_activation")}
    b0_se = [m for m in b0.modules() if hasattr(m, "scale_activation")]
    assert v3_gates == {nn.Hardsigmoid}
    assert {type(m.scale_activation) for m in b0_se} == {nn.Sigmoid}
    assert {type(m.activation) for m in b0_se} == {nn.SiLU} and len(b0_se) == 7


def test_convnext_blocks_run_their_linears_channels_last():
    model = models.convnext(width=8, depths=(1, 1, 1, 1))
    seen = []
    model.stages[0][0].pwconv1.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model(torch.randn(1, 3, 32, 32))
    assert seen[0].shape == (1, 8, 8, 8) and model.stages[0][0].gamma.shape == (8,)
    assert (
        models.convnext(width=8, depths=(1, 1, 1, 1), layer_scale_init=None).stages[0][0].gamma
        is None
    )
