"""BinaryConv2d / BinaryLinear against F.conv2d / F.linear on explicitly binarized tensors.

The layers compute ``alpha_o * conv(sign(x), sign(W)) + bias`` (the +-1 sum exact, scaled
once); the gradients are checked against the textbook ``conv(sign(x), alpha_o * sign(W))``,
written out here as the reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from operators import (
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
    weight_sign,
)
from operators.scaled_products import scaled_conv2d, scaled_linear

SCALES = ["detached", "attached", "learnable", "none"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tensors here are tiny: a second thread only adds synchronisation (tens of ms per
    op on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    sums = F.conv2d(_sign(x), _sign(w), stride=stride, padding=1)
    bias_term = 0 if layer.bias is None else layer.bias[:, None, None]
    expected = alpha[:, None, None] * sums + bias_term
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.weight_scale_values(), alpha)


@pytest.mark.parametrize("scale", SCALES)
def test_linear_forward_is_matmul_of_signs_with_per_row_scale(scale):
    torch.manual_seed(0)
    layer = BinaryLinear(12, 5, weight_scale=scale).double()
    x = torch.randn(3, 12, dtype=torch.float64)
    w = layer.weight.detach()
    alpha = _alpha_reference(w, scale)
    expected = alpha * (_sign(x) @ _sign(w).T) + layer.bias
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("scale", ["detached", "attached", "learnable"])
def test_float32_sums_are_exact_and_the_scale_is_applied_once(scale):
    """A 64 -> 16 1x1 conv: about 10% of the +-1 sums are exactly 0; the float32 output is
    ``alpha * sum`` rounded once (the float64 product of an integer below 2^11 and a float32
    alpha is exact), so a zero sum is exactly 0 and the next sign gives +1."""
    torch.manual_seed(0)
    layer = BinaryConv2d(64, 16, 1, bias=False, weight_scale=scale)
    x = torch.randn(8, 64, 9, 9)
    sums = F.conv2d(_sign(x).double(), _sign(layer.weight.detach()).double())
    alpha = layer.weight_scale_values().detach().double()[:, None, None]
    y = layer(x)
    assert torch.equal(y, (alpha * sums).float())
    assert (sums == 0).double().mean() > 0.05
    assert torch.equal(_sign(y[sums == 0]), torch.ones_like(y[sums == 0]))
    linear = BinaryLinear(64, 16, bias=False, weight_scale=scale)
    h = torch.randn(500, 64)
    sums = _sign(h).double() @ _sign(linear.weight.detach()).double().T
    alpha = linear.weight_scale_values().detach().double()
    assert torch.equal(linear(h), (alpha * sums).float())
    assert (sums == 0).double().mean() > 0.05


def _textbook(layer: BinaryConv2d | BinaryLinear, x: torch.Tensor) -> torch.Tensor:
    """The reference formulation: ``B(x)`` times ``W_b = alpha_o * sign(W)``, autograd'ed."""
    bits = layer.input_binarizer(x)
    if not layer.binarize_weights:
        weight = layer.weight
    else:
        weight = weight_sign(layer.weight)
        if layer.weight_scale != "none":
            alpha = layer.weight_scale_values()
            weight = weight * alpha.view(-1, *([1] * (weight.dim() - 1)))
    if isinstance(layer, BinaryLinear):
        return F.linear(bits, weight, layer.bias)
    geometry = (layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.conv2d(bits, weight, layer.bias, *geometry)


def _gradients(layer, forward, x, upstream) -> dict[str, torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    forward(layer, x).backward(upstream)
    grads = {name: p.grad for name, p in layer.named_parameters() if p.grad is not None}
    return {"x": x.grad, **grads}


CONVS = {
    "3x3-stride2": {"kernel_size": 3, "stride": 2, "padding": 1},
    "1x1-groups2": {"kernel_size": 1, "groups": 2},
    "3x3-dilated": {"kernel_size": 3, "padding": 2, "dilation": 2},
    "2x2-same": {"kernel_size": 2, "padding": "same"},
    "3x3-valid": {"kernel_size": 3, "padding": "valid"},
}


# Each scale mode with another binarizer (thresholds: none, learned, per sample).
BINARIZER_FOR = {"detached": "dysign", "attached": "ste", "learnable": "rsign", "none": "approx"}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("geometry", list(CONVS), ids=list(CONVS))
def test_conv_gradients_equal_the_textbook_formulation(geometry, scale):
    torch.manual_seed(0)
    binarizer = BINARIZER_FOR[scale]
    layer = BinaryConv2d(4, 6, **CONVS[geometry], input_binarizer=binarizer, weight_scale=scale)
    layer = layer.double()
    with torch.no_grad():
        layer.weight.mul_(6)  # some |W| > 1: the STE mask matters
        if binarizer == "dysign":
            layer.input_binarizer.fc2.weight.normal_(0, 0.3)
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    y = layer(x)
    upstream = torch.randn_like(y)
    torch.testing.assert_close(y, _textbook(layer, x))
    got = _gradients(layer, BinaryConv2d.forward, x, upstream)
    expected = _gradients(layer, _textbook, x, upstream)
    assert got.keys() == expected.keys()
    assert {"x", "weight", "bias"} <= got.keys() and ("scale" in got) == (scale == "learnable")
    for name in got:
        torch.testing.assert_close(got[name], expected[name], msg=name)
        assert got[name].abs().sum() > 0, name


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scale", SCALES)
def test_linear_gradients_equal_the_textbook_formulation(scale, bias):
    torch.manual_seed(0)
    layer = BinaryLinear(12, 5, bias=bias, input_binarizer="rsign", weight_scale=scale).double()
    with torch.no_grad():
        layer.weight.mul_(6)
    x = torch.randn(7, 12, dtype=torch.float64)
    upstream = torch.randn(7, 5, dtype=torch.float64)
    got = _gradients(layer, BinaryLinear.forward, x, upstream)
    expected = _gradients(layer, _textbook, x, upstream)
    assert got.keys() == expected.keys() and ("bias" in got) == bias
    for name in got:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_float32_gradients_match_the_textbook_formulation_to_rounding():
    torch.manual_seed(0)
    layer = BinaryConv2d(16, 32, 3, padding=1, input_binarizer="approx", weight_scale="attached")
    x = torch.randn(4, 16, 10, 10)
    upstream = torch.randn(4, 32, 10, 10)
    got = _gradients(layer, BinaryConv2d.forward, x, upstream)
    expected = _gradients(layer, _textbook, x, upstream)
    for name in ("x", "weight", "bias"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("geometry", list(CONVS), ids=list(CONVS))
def test_scaled_conv2d_backward_passes_gradcheck(geometry):
    """The autograd Function against finite differences; as a function of its float inputs
    (signs included) it is bilinear, so the check is exact up to float64 rounding."""
    options = dict(CONVS[geometry])
    kernel, groups = options.pop("kernel_size"), options.get("groups", 1)
    stride, padding = options.get("stride", 1), options.get("padding", 0)
    dilation = options.get("dilation", 1)
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()

    inputs = (leaf(1, 2, 5, 5), leaf(2, 2 // groups, kernel, kernel), leaf(2), leaf(2))
    pairs = [(stride, stride), padding if isinstance(padding, str) else (padding, padding)]

    def f(x, signs, alpha, bias):
        return scaled_conv2d(x, signs, alpha, bias, pairs[0], pairs[1], (dilation,) * 2, groups)

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    x, signs, alpha, bias = inputs
    reference = F.conv2d(
        x, signs * alpha[:, None, None, None], bias, pairs[0], pairs[1], dilation, groups
    )
    torch.testing.assert_close(f(*inputs), reference)


def test_scaled_linear_backward_passes_gradcheck_on_batched_inputs():
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()

    inputs = (leaf(2, 3, 5), leaf(4, 5), leaf(4), leaf(4))
    assert torch.autograd.gradcheck(scaled_linear, inputs)
    assert torch.autograd.gradcheck(lambda x, s, a: scaled_linear(x, s, a, None), inputs[:3])


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


@pytest.mark.parametrize("scale", ["attached", "learnable"])
def test_weights_only_stage_scales_a_float_input_product(scale):
    """Binarizers disabled, weights binary: ``alpha * conv(x, sign(W)) + bias`` on the float
    ``x``, with the textbook gradients."""
    torch.manual_seed(0)
    layer = BinaryConv2d(3, 4, 3, padding=1, input_binarizer="rsign", weight_scale=scale)
    layer = layer.double()
    set_binarization(layer, activations=False, weights=True)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    alpha = layer.weight_scale_values().detach()[:, None, None]
    sums = F.conv2d(x, _sign(layer.weight.detach()), padding=1)
    torch.testing.assert_close(layer(x), alpha * sums + layer.bias.detach()[:, None, None])
    upstream = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    got = _gradients(layer, BinaryConv2d.forward, x, upstream)
    expected = _gradients(layer, _textbook, x, upstream)
    assert "input_binarizer.alpha" not in got
    for name in got:
        torch.testing.assert_close(got[name], expected[name], msg=name)


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


@pytest.mark.parametrize("layer_type", [BinaryConv2d, BinaryLinear])
def test_layers_train_under_cpu_autocast(layer_type):
    """bfloat16 autocast runs the forward in bfloat16; the backward takes the gradient back to
    the saved float32 inputs, so an all-ones upstream gradient gives the float32 gradients."""
    torch.manual_seed(0)
    if layer_type is BinaryConv2d:
        layer = BinaryConv2d(8, 8, 3, padding=1, weight_scale="attached")
        x = torch.randn(2, 8, 5, 5)
    else:
        layer, x = BinaryLinear(8, 4, weight_scale="learnable"), torch.randn(3, 8)

    def autocast_forward(module, h):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(h)
        assert y.dtype == torch.bfloat16
        return y.float()

    upstream = torch.ones_like(layer(x))
    got = _gradients(layer, autocast_forward, x, upstream)
    expected = _gradients(layer, layer_type.forward, x, upstream)
    assert got.keys() == expected.keys()
    for name in got:
        assert torch.equal(got[name], expected[name]), name
