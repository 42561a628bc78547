"""Activation binarizer modules: thresholds, gradients to alpha, DySign's start, state."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import (
    ApproxSign,
    DySign,
    ProgressiveSign,
    RSign,
    SignSTE,
    make_binarizer,
)
from operators.errors import ConversionError

shapes = st.sampled_from([(3, 5), (2, 5, 3, 4), (1, 5, 1, 1)])


def _approx_grad(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z.abs() < 1, 2 - 2 * z.abs(), torch.zeros_like(z))


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(v.shape[0] if v.dim() == 2 else 1, -1, *([1] * (ndim - 2)))


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_rsign_thresholds_per_channel_and_alpha_gets_minus_summed_gradient(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    b = RSign(shape[1]).double()
    with torch.no_grad():
        b.alpha.copy_(torch.randn(shape[1], generator=gen, dtype=torch.float64) * 0.5)
    y = b(x)
    z = x.detach() - _per_channel(b.alpha.detach(), x.dim())
    assert torch.equal(y, torch.where(z >= 0, 1.0, -1.0).double())
    y.backward(upstream)
    grad_x = upstream * _approx_grad(z)
    torch.testing.assert_close(x.grad, grad_x)
    reduce_dims = [d for d in range(x.dim()) if d != 1]
    torch.testing.assert_close(b.alpha.grad, -grad_x.sum(dim=reduce_dims))


def test_rsign_at_threshold_gives_plus_one():
    b = RSign(2)
    with torch.no_grad():
        b.alpha.copy_(torch.tensor([0.5, -0.25]))
    y = b(torch.tensor([[0.5, -0.25], [0.4999, -0.2501]]))
    assert torch.equal(y, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    assert torch.equal(b.static_threshold(), torch.tensor([0.5, -0.25]))


@settings(max_examples=20, deadline=None)
@given(shapes, st.sampled_from(["relu", "identity", "sigmoid", "tanh"]), st.integers(0, 1000))
def test_dysign_starts_exactly_as_rsign_with_zero_alpha(shape, activation, seed):
    torch.manual_seed(seed)
    x = torch.randn(shape, requires_grad=True)
    dy = DySign(shape[1], activation=activation)
    y = dy(x)
    assert torch.equal(y, RSign(shape[1])(x))
    y.sum().backward()
    assert torch.equal(x.grad, _approx_grad(x.detach()))


def test_dysign_threshold_is_the_hyper_head_of_the_spatial_mean():
    torch.manual_seed(0)
    dy = DySign(20, reduction=4, min_hidden=2, activation="tanh")
    assert dy.fc1.out_features == 5 and dy.fc2.out_features == 20
    torch.nn.init.normal_(dy.fc2.weight)
    torch.nn.init.normal_(dy.fc2.bias)
    x = torch.randn(3, 20, 4, 6)
    gap = x.mean(dim=(2, 3))
    alpha = torch.tanh(gap @ dy.fc1.weight.T + dy.fc1.bias) @ dy.fc2.weight.T + dy.fc2.bias
    expected = torch.where(x >= alpha[:, :, None, None], 1.0, -1.0)
    assert torch.equal(dy(x), expected)
    assert torch.allclose(dy.threshold(x).squeeze(), alpha)
    assert DySign(20).fc1.out_features == 8  # max(20 // 16, min_hidden=8)


def test_dysign_gradients_reach_the_hyper_head():
    torch.manual_seed(0)
    dy = DySign(16, min_hidden=4)
    dy(torch.randn(4, 16, 3, 3) * 0.3).sum().backward()
    assert dy.fc2.weight.grad.abs().sum() > 0 and dy.fc2.bias.grad.abs().sum() > 0


def test_dysign_has_no_static_threshold():
    dy = DySign(8)
    assert dy.dynamic and not RSign(8).dynamic
    with pytest.raises(ConversionError, match="dyquantize"):
        dy.static_threshold()


@pytest.mark.parametrize("cls", [SignSTE, ApproxSign, ProgressiveSign])
def test_plain_sign_binarizers_have_zero_threshold(cls):
    x = torch.zeros(2, 4)
    assert cls().static_threshold() is None and cls(4).threshold(x) is None


@pytest.mark.parametrize(
    "binarizer",
    [SignSTE(), ApproxSign(), ProgressiveSign(), RSign(4), DySign(4)],
    ids=lambda b: type(b).__name__,
)
def test_disabled_binarizer_is_identity(binarizer):
    x = torch.randn(2, 4, 3, 3)
    binarizer.enabled = False
    assert binarizer(x) is x


def test_progressive_module_follows_its_lam_buffer():
    b = ProgressiveSign(lam_max=64.0)
    x = torch.tensor([[0.3, -0.01, 0.0]])
    assert torch.allclose(b(x), torch.tanh(x))
    b.lam.fill_(8.0)
    assert torch.allclose(b(x), torch.tanh(8 * x))
    b.lam.fill_(64.0)
    assert torch.equal(b(x), torch.tensor([[1.0, -1.0, 1.0]]))


def test_rsign_with_progressive_backward_uses_lam():
    b = RSign(3, backward="progressive")
    b.lam.fill_(4.0)
    x = torch.tensor([[0.1, -0.2, 0.3]])
    assert torch.allclose(b(x), torch.tanh(4 * x))


def test_lam_and_alpha_round_trip_through_state_dict():
    src = RSign(3, backward="progressive")
    src.lam.fill_(37.5)
    with torch.no_grad():
        src.alpha.copy_(torch.tensor([0.1, 0.2, 0.3]))
    state = src.state_dict()
    assert set(state) == {"alpha", "lam"}
    dst = RSign(3, backward="progressive")
    dst.load_state_dict(state)
    assert dst.lam.item() == 37.5 and torch.equal(dst.alpha, src.alpha)
    assert "lam" in DySign(8).state_dict() and "lam" in SignSTE().state_dict()


def test_make_binarizer_builds_by_name_with_channels():
    assert isinstance(make_binarizer("ste", 8), SignSTE)
    rsign = make_binarizer("rsign", 8, backward="ste")
    assert isinstance(rsign, RSign) and rsign.alpha.shape == (8,) and rsign.backward == "ste"
    assert make_binarizer("dysign", 8).fc1.in_features == 8
    with pytest.raises(ValueError, match=r"'sgn'.*dysign"):
        make_binarizer("sgn", 8)


def test_constructor_and_input_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="backward 'tanh'"):
        RSign(4, backward="tanh")
    with pytest.raises(ValueError, match="activation 'gelu'"):
        DySign(4, activation="gelu")
    with pytest.raises(ValueError, match=r"RSign\(4\) expects input \[N, 4\].*\[2, 3\]"):
        RSign(4)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"DySign\(4\).*\[2, 4, 3\]"):
        DySign(4)(torch.zeros(2, 4, 3))
