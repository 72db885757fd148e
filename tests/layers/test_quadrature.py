"""Nonlinearities by Gauss-Hermite quadrature (src/widenet/layers/quadrature.py)."""

import math

import pytest
import torch

import widenet as wn
from layers.contract import NonlinearityContract, covariances, dual
from widenet.errors import ParameterError

D = torch.float64


class TestElementwise(NonlinearityContract):
    layer_type = wn.Elementwise
    # Reproducible mode takes the mean of both orders of the pair's quadrature (u from q1
    # and v from q2, or the other way), which differ by the quadrature error, not rounding.
    reproducible_tol = 1e-6
    params = {"fn": torch.nn.functional.silu, "name": "silu"}
    bad = ((lambda: wn.Elementwise("tanh"), ParameterError, r"Elementwise: fn must be a callable on tensors \(got 'tanh'\)"),)

    def test_dual_activation_matches_an_independent_integral(self):
        # The default degree against the closed forms of smooth functions.
        q1, q2, K = covariances(seed=4)
        for layer in (wn.Erf(), wn.Gelu(), wn.Sin(1.0, 1.3, 0.2)):
            T, Tdot, _ = dual(layer, q1, q2, K)
            T_q, Tdot_q, _ = dual(wn.Elementwise(layer.fn), q1, q2, K)
            assert torch.allclose(T_q, T, rtol=1e-6, atol=1e-6 * T.abs().max())
            assert torch.allclose(Tdot_q, Tdot, rtol=1e-6, atol=1e-6 * Tdot.abs().max())


def test_derivatives_by_autograd_carry_forward_and_reverse_mode_derivatives():
    """Elementwise without dfn differentiates fn by autograd inside the rule: the kernel's
    derivatives in a hyperparameter must then go through that derivative too."""
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(0))

    def value(w):
        net = wn.Serial(wn.Dense(8, w, 0.1), wn.Elementwise(torch.nn.functional.silu), wn.Dense(1))
        k = net.kernel(x)
        return k.nngp.sum() + 0.7 * k.ntk.sum()

    with fwAD.dual_level():
        w = fwAD.make_dual(torch.tensor(1.2, dtype=D), torch.tensor(1.0, dtype=D))
        tangent = fwAD.unpack_dual(value(w)).tangent
    w = torch.tensor(1.2, dtype=D, requires_grad=True)
    (grad,) = torch.autograd.grad(value(w), w)
    h = 1e-5
    fd = (value(torch.tensor(1.2 + h, dtype=D)) - value(torch.tensor(1.2 - h, dtype=D))) / (2 * h)
    assert abs(float(tangent - fd)) <= 1e-7 * abs(float(fd))
    assert abs(float(grad - tangent)) <= 1e-11 * abs(float(tangent))


def test_quadrature_warns_with_the_numbers_where_it_cannot_reach_its_accuracy():
    x = torch.randn(20, 10, dtype=D, generator=torch.Generator().manual_seed(0))
    silu = wn.Elementwise(torch.nn.functional.silu, name="silu")
    wn.Serial(wn.Dense(64, 1.0), silu, wn.Dense(1)).kernel(x)  # moderate variances: silent (warnings are errors)
    with pytest.warns(wn.errors.AccuracyWarning, match=r"Elementwise\(tanh, degree=96\): Gauss-Hermite quadrature at "
                                                       r"degree 96 is accurate to only .* at pre-activation variance "
                                                       r"[0-9.]+ .*raise degree="):
        wn.Serial(wn.Dense(64, 6.0), wn.Elementwise(torch.tanh), wn.Dense(1)).kernel(x)


def _erf_dual(c, v1, v2):
    """E[erf(u) erf(v)] (Williams 1997), written here independently of wn.Erf."""
    return 2 / math.pi * torch.asin(2 * c / torch.sqrt((1 + 2 * v1) * (1 + 2 * v2)))


def _theta(c, v1, v2):
    return torch.acos((c / torch.sqrt(v1 * v2)).clamp(-1, 1))


def _relu_dual(c, v1, v2):
    t = _theta(c, v1, v2)
    return torch.sqrt(v1 * v2) * (torch.sin(t) + (math.pi - t) * torch.cos(t)) / (2 * math.pi)


def _relu_dot(c, v1, v2):
    return (math.pi - _theta(c, v1, v2)) / (2 * math.pi)


class TestElementwiseClosedForm(NonlinearityContract):
    """A user's closed form: the kernel against Monte Carlo of the twin (driven by ``fn``),
    its dual against quadrature of ``fn``, the NTK through autograd of ``nngp_fn``."""

    layer_type = wn.Elementwise
    params = {"fn": torch.erf, "nngp_fn": _erf_dual}
    dual_rtol = 1e-9
    bad = (
        (lambda: wn.Elementwise(torch.erf, nngp_fn=lambda c, v1, v2: 1.01 * _erf_dual(c, v1, v2)), ParameterError,
         r"Elementwise: nngp_fn disagrees with quadrature of fn at cov12=.*, var1=.*, var2=.*: nngp_fn gives .*, "
         r"quadrature .* \(off by .* of the kernel's scale"),
        (lambda: wn.Elementwise(torch.erf, nngp_fn=_erf_dual, d_nngp_fn=lambda c, v1, v2: c), ParameterError,
         r"Elementwise: d_nngp_fn disagrees with the derivative of nngp_fn in cov12 at cov12="),
        (lambda: wn.Elementwise(torch.erf, d_nngp_fn=_relu_dot), ParameterError,
         r"Elementwise: d_nngp_fn needs nngp_fn"),
        (lambda: wn.Elementwise(torch.erf, nngp_fn="asin"), ParameterError,
         r"Elementwise: nngp_fn must be a callable on tensors or None \(got 'asin'\)"),
        (lambda: wn.Elementwise(torch.erf, nngp_fn=lambda c, v1, v2: c.sum()), ParameterError,
         r"Elementwise: nngp_fn and d_nngp_fn must return a tensor of the shape of their arguments \(24,\)"),
        (lambda: wn.Elementwise(torch.erf, nngp_fn=lambda c, v1, v2: c.no_such_method()), ParameterError,
         r"Elementwise: nngp_fn \(or d_nngp_fn\) failed on float64 tensors .*AttributeError"),
    )


def test_a_kinked_closed_form_passes_its_check_and_a_one_percent_error_does_not():
    x = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    relu = wn.Elementwise(torch.relu, nngp_fn=_relu_dual, d_nngp_fn=_relu_dot, name="relu")
    ours = wn.Serial(wn.Dense(1, 1.2, 0.1), relu, wn.Dense(1)).kernel(x)
    theirs = wn.Serial(wn.Dense(1, 1.2, 0.1), wn.Relu(), wn.Dense(1)).kernel(x)
    assert torch.allclose(ours.nngp, theirs.nngp, rtol=1e-13, atol=0)
    assert torch.allclose(ours.ntk, theirs.ntk, rtol=1e-13, atol=0)
    # Gauss-Hermite misses ReLU by ~1e-3: the check allows its own error, and no more
    with pytest.raises(ParameterError, match="nngp_fn disagrees with quadrature of fn"):
        wn.Elementwise(torch.relu, nngp_fn=lambda c, v1, v2: 1.01 * _relu_dual(c, v1, v2))
    with pytest.raises(ParameterError, match="nngp_fn disagrees with quadrature of fn"):
        wn.Elementwise(torch.relu, nngp_fn=lambda c, v1, v2: _relu_dual(0.9 * c, v1, v2))
