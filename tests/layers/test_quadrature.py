"""Nonlinearities by Gauss-Hermite quadrature (src/widenet/layers/quadrature.py)."""

import torch

import widenet as wn
from layers.contract import NonlinearityContract, covariances, dual
from widenet.errors import ParameterError

D = torch.float64


class TestTanh(NonlinearityContract):
    layer_type = wn.Tanh
    # Reproducible mode takes the mean of both orders of the pair's quadrature (u from q1
    # and v from q2, or the other way), which differ by the quadrature error, not rounding.
    reproducible_tol = 1e-6
    bad = ((lambda: wn.Tanh(degree=1), ParameterError, r"Tanh: degree must be an integer >= 2 \(got 1\)"),)

    def test_dual_activation_matches_an_independent_integral(self):
        # No closed form: the default degree against degree 300.
        q1, q2, K = covariances(seed=4)
        T, Tdot, _ = dual(wn.Tanh(), q1, q2, K)
        T_ref, Tdot_ref, _ = dual(wn.Elementwise(torch.tanh, degree=300), q1, q2, K)
        assert torch.allclose(T, T_ref, rtol=1e-6, atol=1e-6 * T_ref.abs().max())
        assert torch.allclose(Tdot, Tdot_ref, rtol=1e-6, atol=1e-6 * Tdot_ref.abs().max())


class TestElementwise(NonlinearityContract):
    layer_type = wn.Elementwise
    reproducible_tol = 1e-6  # see TestTanh
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
