"""RPReLU and DyPReLU against a naive per-element reference of their formula
(``beta (x - gamma) + zeta`` below ``gamma``, ``x - gamma + zeta`` above; docs/OPERATORS.md)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from operators import DyPReLU, RPReLU

shapes = st.sampled_from([(3, 4), (2, 4, 3, 5), (1, 4, 1, 1)])


def _rprelu_reference(x, gamma, zeta, beta):
    """Per element: x - g + z if x >= g else b (x - g) + z, channel = index 1; gamma and zeta
    are [C] or per-sample [N, C]."""
    out = torch.empty_like(x)
    for index in itertools.product(*map(range, x.shape)):
        n, c = index[0], index[1]
        g = gamma[n, c] if gamma.dim() == 2 else gamma[c]
        z = zeta[n, c] if zeta.dim() == 2 else zeta[c]
        v = x[index]
        out[index] = v - g + z if v >= g else beta[c] * (v - g) + z
    return out


@settings(max_examples=25, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_rprelu_matches_the_piecewise_formula(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    f = RPReLU(shape[1]).double()
    with torch.no_grad():
        for p in (f.gamma, f.zeta, f.beta):
            p.copy_(torch.randn(shape[1], generator=gen, dtype=torch.float64))
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x.view(-1)[0] = f.gamma[0]  # exactly at the threshold: the upper branch
    expected = _rprelu_reference(x, f.gamma.detach(), f.zeta.detach(), f.beta.detach())
    torch.testing.assert_close(f(x), expected)


def test_rprelu_gradients_match_finite_differences():
    torch.manual_seed(0)
    f = RPReLU(3).double()
    with torch.no_grad():
        f.gamma.copy_(torch.tensor([0.1, -0.2, 0.3]))
        f.zeta.copy_(torch.tensor([0.5, 0.0, -0.5]))
    x = (torch.randn(2, 3, 2, 2, dtype=torch.float64) + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,))


def test_rprelu_starts_as_prelu():
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(RPReLU(6)(x), nn.PReLU(6, 0.25)(x))
    assert torch.equal(RPReLU(6, init=0.1).beta, torch.full((6,), 0.1))


@settings(max_examples=20, deadline=None)
@given(shapes, st.sampled_from(["relu", "identity", "sigmoid", "tanh"]), st.integers(0, 1000))
def test_dyprelu_starts_exactly_as_prelu(shape, activation, seed):
    torch.manual_seed(seed)
    x = torch.randn(shape)
    assert torch.equal(DyPReLU(shape[1], activation=activation)(x), nn.PReLU(shape[1], 0.25)(x))


@pytest.mark.parametrize("shape", [(3, 16), (2, 16, 3, 4)])
def test_dyprelu_shifts_come_from_one_hyper_head(shape):
    torch.manual_seed(1)
    f = DyPReLU(16, reduction=4, min_hidden=2, activation="sigmoid")
    assert f.fc1.out_features == 4 and f.fc2.out_features == 32
    nn.init.normal_(f.fc2.weight)
    nn.init.normal_(f.fc2.bias)
    with torch.no_grad():
        f.beta.uniform_(-1, 1)
    x = torch.randn(shape)
    gap = x if x.dim() == 2 else x.mean(dim=(2, 3))
    h = torch.sigmoid(gap @ f.fc1.weight.T + f.fc1.bias) @ f.fc2.weight.T + f.fc2.bias
    gamma, zeta = h[:, :16].detach(), h[:, 16:].detach()
    expected = _rprelu_reference(x, gamma, zeta, f.beta.detach())
    torch.testing.assert_close(f(x), expected)


def test_dyprelu_gradients_reach_every_parameter():
    torch.manual_seed(0)
    f = DyPReLU(8, min_hidden=4)
    nn.init.normal_(f.fc2.weight)
    f(torch.randn(2, 8, 3, 3)).square().sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_wrong_channel_count_is_reported():
    with pytest.raises(ValueError, match=r"RPReLU\(4\).*\[2, 5\]"):
        RPReLU(4)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"DyPReLU\(4\).*\[2, 5, 1, 1\]"):
        DyPReLU(4)(torch.zeros(2, 5, 1, 1))
