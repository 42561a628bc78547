"""The fused shifted PReLU against RPReLU's piecewise formula written with torch ops, and the
fast PReLU against torch's.

The reference is ``where(d >= 0, d, beta d) + zeta`` with ``d = x - gamma``, so at the kink
``d = 0`` the gradient is the upper branch's (slope 1), as the formula's ``x >= gamma`` says
(torch's own prelu uses the lower slope there)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from operators import PReLU
from operators.functional import prelu, shifted_prelu

cases = st.sampled_from(
    [((3, 4), (1, 4)), ((3, 4), (3, 4)), ((2, 4, 3, 2), (1, 4, 1, 1)), ((2, 4, 3, 2), (2, 4, 1, 1))]
)


def _inputs(shapes, seed):
    x_shape, shift_shape = shapes
    gen = torch.Generator().manual_seed(seed)

    def make(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()

    x = make(*x_shape)
    with torch.no_grad():
        x.view(-1)[:2] = 0.0  # on the kink when gamma is 0
    return x, make(*shift_shape), make(x_shape[1]), make(*shift_shape)


@settings(max_examples=40, deadline=None)
@given(cases, st.integers(0, 2**31 - 1), st.booleans())
def test_values_and_all_gradients_match_the_piecewise_formula(shapes, seed, zero_shift):
    x, gamma, beta, zeta = _inputs(shapes, seed)
    if zero_shift:
        with torch.no_grad():
            gamma.zero_()
    upstream = torch.randn(x.shape, dtype=torch.float64)
    inputs = (x, gamma, beta, zeta)
    y = shifted_prelu(*inputs)
    grads = torch.autograd.grad(y, inputs, upstream)
    d = x - gamma
    y_ref = torch.where(d >= 0, d, beta.view(1, -1, *([1] * (x.dim() - 2))) * d) + zeta
    grads_ref = torch.autograd.grad(y_ref, inputs, upstream)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-15)
    for name, got, want in zip(["x", "gamma", "beta", "zeta"], grads, grads_ref):
        torch.testing.assert_close(got, want, msg=name)
        assert got.shape == want.shape, name


def test_gradcheck_away_from_the_kink():
    x, gamma, beta, zeta = _inputs(((2, 3, 2, 2), (2, 3, 1, 1)), 0)
    with torch.no_grad():
        x.view(-1)[:2] = 0.5
    assert torch.autograd.gradcheck(shifted_prelu, (x, gamma, beta, zeta))


def test_without_shifts_it_equals_prelu_exactly():
    x = torch.randn(3, 5, 4, 4)
    beta = torch.rand(5)
    zeros = torch.zeros(1, 5, 1, 1)
    assert torch.equal(shifted_prelu(x, zeros, beta, zeros), F.prelu(x, beta))


def test_kink_takes_the_upper_branch_slope():
    x = torch.tensor([[0.0, 0.5, -0.5]], requires_grad=True)
    gamma = torch.tensor([[0.0, 0.5, 0.0]])
    shifted_prelu(x, gamma, torch.full((3,), 0.25), torch.zeros(1, 3)).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 1.0, 0.25]]))


def test_only_requested_gradients_are_computed():
    x, gamma, beta, zeta = _inputs(((2, 3), (1, 3)), 1)
    (g,) = torch.autograd.grad(shifted_prelu(x, gamma.detach(), beta, zeta.detach()).sum(), beta)
    assert g.shape == (3,)
    assert torch.allclose(g, torch.clamp(x.detach() - gamma.detach(), max=0).sum(0))


@pytest.mark.parametrize("num_parameters", [1, 5])
@pytest.mark.parametrize("shape", [(3, 5), (2, 5, 3, 4)])
def test_prelu_module_is_a_drop_in_torch_prelu(num_parameters, shape):
    torch.manual_seed(0)
    ours, theirs = PReLU(num_parameters, init=0.1), nn.PReLU(num_parameters, init=0.1)
    with torch.no_grad():
        ours.weight.uniform_(-1, 1)
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.PReLU) and list(ours.state_dict()) == ["weight"]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(shape, dtype=torch.float64)
    y, y_ref = ours.double()(x), theirs.double()(x)
    assert torch.equal(y, y_ref)
    grads = torch.autograd.grad(y, (x, ours.weight), upstream)
    grads_ref = torch.autograd.grad(y_ref, (x, theirs.weight), upstream)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want)


def test_prelu_function_matches_torch_on_rank_one_weights():
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(prelu(x, torch.tensor([0.3])), F.prelu(x, torch.tensor([0.3])))
