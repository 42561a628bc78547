"""Forward values and gradients of the sign functions against their closed forms
(docs/OPERATORS.md, "Activation sign functions")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.functional import (
    approx_sign,
    binarize_activation,
    progressive_sign,
    sign_ste,
    weight_sign,
)

# Values where the formulas change branch, and their float32 neighbours.
_EDGES = [0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 1e6, -1e6]
_EDGES += [
    float(np.nextafter(np.float32(e), np.float32(d))) for e in (1.0, -1.0) for d in (-2.0, 2.0)
]
_values = st.one_of(
    st.sampled_from(_EDGES),
    st.floats(-3.0, 3.0, allow_nan=False, width=32),
    st.floats(-(2.0**100), 2.0**100, allow_nan=False, allow_infinity=False, width=32),
)
values = st.lists(_values, min_size=1, max_size=40)
dtypes = st.sampled_from([torch.float32, torch.float64])


def _sign_reference(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (so -0.0 and 0.0 -> +1), else -1, elementwise in Python."""
    return torch.tensor([1.0 if v >= 0 else -1.0 for v in x.tolist()], dtype=x.dtype)


def _forward_backward(fn, data: list[float], dtype: torch.dtype):
    x = torch.tensor(data, dtype=dtype, requires_grad=True)
    upstream = torch.linspace(0.5, 2.0, len(data), dtype=dtype)
    y = fn(x)
    y.backward(upstream)
    return x.detach(), y.detach(), x.grad, upstream


@settings(max_examples=60, deadline=None)
@given(values, dtypes)
def test_sign_ste_forward_is_sign_and_gradient_is_clipped_identity(data, dtype):
    x, y, grad, upstream = _forward_backward(sign_ste, data, dtype)
    assert y.dtype == dtype
    assert torch.equal(y, _sign_reference(x))
    mask = torch.tensor([1.0 if abs(v) <= 1 else 0.0 for v in x.tolist()], dtype=dtype)
    assert torch.equal(grad, upstream * mask)


@settings(max_examples=60, deadline=None)
@given(values, dtypes)
def test_weight_sign_forward_is_sign_and_gradient_is_clipped_identity(data, dtype):
    x, y, grad, upstream = _forward_backward(weight_sign, data, dtype)
    assert torch.equal(y, _sign_reference(x))
    mask = torch.tensor([1.0 if abs(v) <= 1 else 0.0 for v in x.tolist()], dtype=dtype)
    assert torch.equal(grad, upstream * mask)


@settings(max_examples=60, deadline=None)
@given(values, dtypes)
def test_approx_sign_gradient_is_two_minus_two_abs_inside_unit_interval(data, dtype):
    x, y, grad, upstream = _forward_backward(approx_sign, data, dtype)
    assert torch.equal(y, _sign_reference(x))
    expected = torch.tensor(
        [(2 - 2 * abs(v)) if abs(v) < 1 else 0.0 for v in x.tolist()], dtype=dtype
    )
    torch.testing.assert_close(grad, upstream * expected, rtol=1e-6, atol=0)
    assert torch.all(grad[x.abs() >= 1] == 0)


@settings(max_examples=50, deadline=None)
@given(values, st.floats(0.01, 1000.0), dtypes)
def test_progressive_below_lam_max_is_tanh_with_its_derivative(data, lam, dtype):
    x, y, grad, upstream = _forward_backward(lambda t: progressive_sign(t, lam), data, dtype)
    # Reference in float64; tolerances of a few ulps of 1 (tanh saturates at +-1, so
    # lam (1 - tanh^2) inherits an absolute error of about lam * eps in any float format).
    tanh = torch.tanh(x.double() * lam)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.double(), tanh, rtol=0, atol=4 * eps)
    expected = upstream.double() * lam * (1 - tanh**2)
    torch.testing.assert_close(grad.double(), expected, rtol=8 * eps, atol=16 * lam * eps)


@settings(max_examples=50, deadline=None)
@given(values, st.sampled_from([1024.0, 2048.0, 1e5]), dtypes)
def test_progressive_at_lam_max_is_hard_sign_with_tanh_derivative(data, lam, dtype):
    x, y, grad, upstream = _forward_backward(lambda t: progressive_sign(t, lam), data, dtype)
    assert torch.equal(y, _sign_reference(x))
    tanh = torch.tanh(x * lam)
    torch.testing.assert_close(grad, upstream * lam * (1 - tanh**2))


def test_progressive_switch_happens_exactly_at_lam_max():
    x = torch.tensor([0.25, -0.5])
    assert torch.allclose(progressive_sign(x, 7.999, lam_max=8.0), torch.tanh(x * 7.999))
    assert torch.equal(progressive_sign(x, 8.0, lam_max=8.0), torch.tensor([1.0, -1.0]))
    assert torch.equal(
        progressive_sign(x, torch.tensor(8.0), lam_max=8.0), torch.tensor([1.0, -1.0])
    )


def test_sign_functions_never_output_zero_and_preserve_shape_and_layout():
    x = torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last)
    for fn in (sign_ste, approx_sign, weight_sign):
        y = fn(x)
        assert y.shape == x.shape and torch.all(y == 1)
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backward", ["ste", "approx", "progressive"])
def test_binarize_activation_dispatches_to_the_named_function(backward):
    x = torch.linspace(-2, 2, 17, requires_grad=True)
    reference = {
        "ste": sign_ste,
        "approx": approx_sign,
        "progressive": lambda t: progressive_sign(t, 3.0),
    }[backward]
    (grad_ref,) = torch.autograd.grad(reference(x).sum(), x)
    y = binarize_activation(x, backward, lam=3.0)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y, reference(x)) and torch.equal(grad, grad_ref)


def test_binarize_activation_rejects_unknown_names_and_missing_lam():
    with pytest.raises(ValueError, match=r"'tanh'.*ste"):
        binarize_activation(torch.zeros(1), "tanh")
    with pytest.raises(ValueError, match="needs lam"):
        binarize_activation(torch.zeros(1), "progressive")


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([(4, 3), (2, 3, 2, 5)]),
    st.sampled_from(["ste", "approx", "progressive"]),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_threshold_gradient_is_minus_the_summed_input_gradient(shape, backward, per_sample, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    t_shape = (shape[0] if per_sample else 1, shape[1], *([1] * (len(shape) - 2)))
    t = torch.randn(t_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    y = binarize_activation(x, backward, lam=2.5, threshold=t)
    y.backward(upstream)

    z = (x.detach() - t.detach()).requires_grad_()
    y_ref = binarize_activation(z, backward, lam=2.5)
    y_ref.backward(upstream)
    assert torch.equal(y, y_ref)
    assert torch.equal(x.grad, z.grad)
    torch.testing.assert_close(t.grad, -z.grad.sum_to_size(t_shape))
