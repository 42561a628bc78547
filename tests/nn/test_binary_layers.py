"""BinaryConv2d / BinaryLinear against F.conv2d / F.linear on explicitly binarized tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from binarize.nn import (
    ApproxSign,
    BinaryConv2d,
    BinaryLinear,
    DySign,
    ProgressiveSign,
    RSign,
    SignSTE,
    binarizers,
    binary_layers,
    set_binarization,
)

SCALES = ["detached", "attached", "learnable", "none"]


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def _alpha_reference(w: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "none":
        return torch.ones(w.shape[0], dtype=w.dtype)
    return torch.stack([w[o].abs().mean() for o in range(w.shape[0])])


def _conv(scale: str, **kw) -> BinaryConv2d:
    return BinaryConv2d(4, 6, 3, padding=1, stride=kw.pop("stride", 1), weight_scale=scale, **kw)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(SCALES), st.sampled_from([1, 2]), st.booleans(), st.integers(0, 999))
def test_conv_forward_is_conv_of_signs_with_per_channel_scale(scale, stride, bias, seed):
    torch.manual_seed(seed)
    layer = BinaryConv2d(4, 6, 3, stride=stride, padding=1, bias=bias, weight_scale=scale).double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    w = layer.weight.detach()
    alpha = _alpha_reference(w, scale)
    expected = F.conv2d(
        _sign(x), alpha[:, None, None, None] * _sign(w), layer.bias, stride=stride, padding=1
    )
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.weight_scale_values(), alpha)


@pytest.mark.parametrize("scale", SCALES)
def test_linear_forward_is_matmul_of_signs_with_per_row_scale(scale):
    torch.manual_seed(0)
    layer = BinaryLinear(12, 5, weight_scale=scale).double()
    x = torch.randn(3, 12, dtype=torch.float64)
    w = layer.weight.detach()
    alpha = _alpha_reference(w, scale)
    expected = _sign(x) @ (alpha[:, None] * _sign(w)).T + layer.bias
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("scale", ["detached", "none", "learnable"])
def test_latent_weight_gradient_is_clipped_ste_when_alpha_is_not_attached(scale):
    torch.manual_seed(0)
    layer = BinaryConv2d(3, 4, 3, padding=1, bias=False, weight_scale=scale).double()
    with torch.no_grad():
        layer.weight.mul_(8)  # push some |W| past 1
        layer.weight[0, 0, 0, 0] = 1.0  # exactly at the clip: gradient passes
        layer.weight[0, 0, 0, 1] = -1.0
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    upstream = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    layer(x).backward(upstream)

    w_b = layer.binary_weight().detach().requires_grad_()
    F.conv2d(_sign(x), w_b, padding=1).backward(upstream)
    mask = (layer.weight.detach().abs() <= 1).double()
    alpha = layer.weight_scale_values().detach()[:, None, None, None]
    torch.testing.assert_close(layer.weight.grad, w_b.grad * alpha * mask)
    assert layer.weight.grad[0, 0, 0, 0] != 0 and layer.weight.grad[0, 0, 0, 1] != 0
    assert 0 < mask.mean() < 1


def test_attached_scale_passes_gradient_through_alpha_and_detached_does_not():
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    with torch.no_grad():
        base.weight.mul_(4)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    upstream = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    grads = {}
    for mode in ("detached", "attached"):
        layer = BinaryConv2d.from_float(base, weight_scale=mode)
        layer(x).backward(upstream)
        grads[mode] = layer.weight.grad
    # d alpha_o / d W_oij = sign(W_oij) / n, times sum_ij (dL/dW_b)_oij sign(W_oij).
    w = base.weight.detach()
    w_b = (_alpha_reference(w, "attached")[:, None, None, None] * _sign(w)).requires_grad_()
    F.conv2d(_sign(x), w_b, padding=1).backward(upstream)
    through_alpha = (w_b.grad * _sign(w)).sum(dim=(1, 2, 3), keepdim=True) * _sign(w) / w[0].numel()
    torch.testing.assert_close(grads["attached"] - grads["detached"], through_alpha)
    assert through_alpha.abs().sum() > 0


def test_learnable_scale_starts_at_mean_abs_weight_and_is_trained():
    torch.manual_seed(0)
    base = nn.Linear(10, 3)
    layer = BinaryLinear.from_float(base, weight_scale="learnable")
    torch.testing.assert_close(layer.scale.detach(), base.weight.detach().abs().mean(dim=1))
    layer(torch.randn(4, 10)).sum().backward()
    assert layer.scale.grad is not None and layer.scale.grad.abs().sum() > 0
    assert "scale" in layer.state_dict()
    assert "scale" not in BinaryLinear(10, 3, weight_scale="detached").state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_float_preserves_hyper_parameters_weights_dtype_and_mode(dtype):
    conv = nn.Conv2d(4, 8, (3, 1), stride=(2, 1), padding=(1, 0), dilation=1, groups=2)
    conv = conv.to(dtype).eval()
    layer = BinaryConv2d.from_float(conv, input_binarizer="rsign", weight_scale="learnable")
    assert (layer.kernel_size, layer.stride, layer.padding, layer.groups) == (
        (3, 1),
        (2, 1),
        (1, 0),
        2,
    )
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    assert layer.weight.dtype == dtype and layer.input_binarizer.alpha.dtype == dtype
    assert isinstance(layer.input_binarizer, RSign) and layer.input_binarizer.alpha.shape == (4,)
    assert not layer.training
    linear = BinaryLinear.from_float(nn.Linear(6, 2, bias=False).to(dtype))
    assert linear.bias is None and linear.weight.dtype == dtype


def test_fully_disabled_layers_reproduce_the_float_layers_exactly():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1)
    lin = nn.Linear(7, 3)
    model = nn.Sequential(
        BinaryConv2d.from_float(conv, input_binarizer="dysign"),
        nn.Flatten(2),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        BinaryLinear.from_float(lin, input_binarizer="rsign", weight_scale="learnable"),
    )
    set_binarization(model, activations=False, weights=False)
    x = torch.randn(2, 5, 9, 9)
    assert torch.equal(model[0](x), conv(x))
    h = torch.randn(4, 7)
    assert torch.equal(model[4](h), lin(h))


def test_stage_one_binarizes_activations_only():
    torch.manual_seed(0)
    layer = BinaryConv2d(3, 4, 3, input_binarizer="approx")
    set_binarization(layer, activations=True, weights=False)
    x = torch.randn(1, 3, 6, 6)
    assert torch.equal(layer(x), F.conv2d(_sign(x), layer.weight, layer.bias))
    assert layer.binary_weight() is layer.weight


def test_input_binarizer_by_name_module_or_none():
    expected = {
        "ste": SignSTE,
        "approx": ApproxSign,
        "progressive": ProgressiveSign,
        "rsign": RSign,
        "dysign": DySign,
    }
    for name, cls in expected.items():
        b = BinaryConv2d(8, 4, 1, input_binarizer=name).input_binarizer
        assert type(b) is cls
    assert isinstance(BinaryLinear(8, 4, input_binarizer=None).input_binarizer, nn.Identity)
    custom = RSign(8, backward="ste")
    assert BinaryLinear(8, 4, input_binarizer=custom).input_binarizer is custom


def test_helpers_find_binarizers_and_layers():
    model = nn.Sequential(
        BinaryConv2d(3, 4, 3, input_binarizer="rsign"),
        nn.ReLU(),
        RSign(4),
        BinaryConv2d(4, 4, 3, input_binarizer=None),
    )
    assert [type(b).__name__ for b in binarizers(model)] == ["RSign", "RSign"]
    assert len(list(binary_layers(model))) == 2
    set_binarization(model, activations=False)
    assert not any(b.enabled for b in binarizers(model))
    assert all(layer.binarize_weights for layer in binary_layers(model))


def test_state_dict_round_trip_keeps_lam_and_torch_keys():
    src = BinaryConv2d(4, 4, 3, input_binarizer=ProgressiveSign())
    src.input_binarizer.lam.fill_(12.0)
    state = src.state_dict()
    assert set(state) == {"weight", "bias", "input_binarizer.lam"}
    dst = BinaryConv2d(4, 4, 3, input_binarizer="progressive")
    dst.load_state_dict(state)
    assert dst.input_binarizer.lam.item() == 12.0 and torch.equal(dst.weight, src.weight)


def test_bad_options_are_rejected_with_the_offending_value():
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        BinaryConv2d(3, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="weight_scale 'mean'"):
        BinaryLinear(3, 4, weight_scale="mean")
    with pytest.raises(TypeError, match=r"expects an nn\.Conv2d, got Linear"):
        BinaryConv2d.from_float(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        BinaryConv2d.from_float(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"))


def test_extra_repr_shows_the_options():
    text = repr(BinaryConv2d(3, 4, 3, weight_scale="attached", input_binarizer="rsign"))
    assert "weight_scale='attached'" in text and "binarize_weights=True" in text
    assert "RSign(3, backward='approx')" in text
