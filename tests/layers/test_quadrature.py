"""Nonlinearities by Gauss-Hermite quadrature (src/widenet/layers/quadrature.py)."""

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
