"""Every closed-form dual activation against an independent integral (REFERENCE oracle 2).

Smooth functions: high-degree Gauss-Hermite quadrature of the bivariate Gaussian.
Kinked functions (ReLU family, sign, rectified monomials): quadrature converges slowly there,
so they are checked against direct bivariate Monte Carlo with a standard-error bound.
"""

import math

import pytest
import torch

import widenet as wn
from widenet import Kernel


def _covariances(n=40, seed=0):
    """Random (q1, q2, K) pairs, including correlations near +-1 and zero variances."""
    g = torch.Generator().manual_seed(seed)
    q1 = torch.rand(n, generator=g, dtype=torch.float64) * 2.5 + 0.05
    q2 = torch.rand(n, generator=g, dtype=torch.float64) * 2.5 + 0.05
    rho = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    rho[:4] = torch.tensor([1.0, -1.0, 1 - 1e-9, -1 + 1e-9], dtype=torch.float64)
    q1[4], q2[5] = 0.0, 0.0
    K = rho * torch.sqrt(q1 * q2)
    return q1, q2, K


def _dual(layer, q1, q2, K):
    """(T, Tdot) on the paired covariances through the public Kernel API."""
    n = K.shape[0]
    ones = torch.ones(n, n, dtype=K.dtype)
    kernel = Kernel(nngp=torch.diag(K), ntk=ones, var1=q1, var2=q2, is_gaussian=True)
    out = layer.apply(kernel)
    return torch.diagonal(out.nngp), torch.diagonal(out.ntk), out.var1


def _derivative(fn):
    def d(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(fn(x).sum(), x)[0]
    return d


SMOOTH = [wn.Erf(1.1, 0.8, 0.2), wn.SigmoidLike(), wn.Gelu(), wn.Sin(1.0, 0.9, 0.3),
          wn.Cos(0.7, 1.2, 0.1), wn.Rbf(0.4), wn.Exp(0.6, 0.5), wn.Gaussian(1.2, -0.4),
          wn.Monomial(0), wn.Monomial(1), wn.Monomial(4), wn.Hermite(0), wn.Hermite(2), wn.Hermite(5),
          wn.Polynomial((0.2, -0.6, 0.4, 0.1))]


@pytest.mark.parametrize("layer", SMOOTH, ids=repr)
def test_smooth_closed_forms_match_quadrature(layer):
    q1, q2, K = _covariances()
    T, Tdot, var = _dual(layer, q1, q2, K)
    reference = wn.Elementwise(layer.fn, _derivative(layer.fn), degree=200)
    T_ref, Tdot_ref, var_ref = _dual(reference, q1, q2, K)
    scale = T_ref.abs().max()
    assert torch.allclose(T, T_ref, rtol=1e-9, atol=1e-9 * scale)
    assert torch.allclose(Tdot, Tdot_ref, rtol=1e-9, atol=1e-9 * Tdot_ref.abs().max() + 1e-12)
    assert torch.allclose(var, var_ref, rtol=1e-9, atol=1e-12)


KINKED = [wn.Relu(), wn.LeakyRelu(0.2), wn.ABRelu(-0.4, 1.3), wn.Abs(), wn.Sign(),
          wn.RectifiedMonomial(0), wn.RectifiedMonomial(1), wn.RectifiedMonomial(2),
          wn.RectifiedMonomial(3)]


SQRT_EPS = 1e-7


def _mc_dual(fn, dfn, q1, q2, K, n_samples, seed):
    g = torch.Generator().manual_seed(seed)
    n = K.shape[0]
    z = torch.randn(2, n_samples, n, generator=g, dtype=torch.float64)
    prod = q1 * q2
    rho = torch.where(prod > 0, K / torch.sqrt(torch.where(prod > 0, prod, 1)), 0).clamp(-1, 1)
    u = torch.sqrt(q1) * z[0]
    v = torch.sqrt(q2) * (rho * z[0] + torch.sqrt(1 - rho**2) * z[1])
    out = []
    for f in (fn, dfn):
        s = f(u) * f(v)
        out.append((s.mean(0), s.std(0) / math.sqrt(n_samples)))
    return out


@pytest.mark.parametrize("layer", KINKED, ids=repr)
def test_kinked_closed_forms_match_monte_carlo(layer):
    q1, q2, K = _covariances(n=24, seed=1)
    nonzero = (q1 > 0) & (q2 > 0)  # at zero variance phi'(0) is a convention; see below
    T, Tdot, var = _dual(layer, q1, q2, K)
    dfn = (lambda x: torch.zeros_like(x)) if isinstance(layer, wn.Sign) else _derivative(layer.fn)
    (T_mc, T_se), (D_mc, D_se) = _mc_dual(layer.fn, dfn, q1, q2, K, 400_000, seed=2)
    # At |rho| = 1 the angle is only determined to sqrt(machine epsilon) by a rounded K:
    # SQRT_EPS absorbs that, and is far below every Monte Carlo standard error elsewhere.
    assert torch.all((T - T_mc).abs() <= 5 * T_se + SQRT_EPS), (T, T_mc, T_se)
    if not isinstance(layer, wn.RectifiedMonomial) or layer.degree > 0:
        ok = (Tdot - D_mc).abs() <= 5 * D_se + SQRT_EPS
        assert torch.all(ok[nonzero]), (Tdot, D_mc, D_se)
    diag_mc = (layer.fn(torch.sqrt(q1) * torch.randn(400_000, 1, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(3))) ** 2)
    assert torch.all((var - diag_mc.mean(0)).abs() <= 5 * diag_mc.std(0) / math.sqrt(400_000) + 1e-12)


def test_relu_closed_form_is_cho_saul():
    q1, q2, K = _covariances()
    T, Tdot, _ = _dual(wn.Relu(), q1, q2, K)
    prod = q1 * q2
    theta = torch.arccos(torch.where(prod > 0, K / torch.sqrt(torch.where(prod > 0, prod, 1)), 0).clamp(-1, 1))
    expected = torch.sqrt(prod) / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta))
    inner = torch.arange(len(K)) >= 4  # rho = +-1 (+-1e-9) only to sqrt(eps), see SQRT_EPS
    assert torch.allclose(T[inner], expected[inner], atol=1e-12)
    assert torch.allclose(T, expected, atol=SQRT_EPS)
    nonzero = (prod > 0) & inner
    assert torch.allclose(Tdot[nonzero], ((math.pi - theta) / (2 * math.pi))[nonzero], atol=1e-12)
    nonzero = prod > 0
    assert torch.allclose(Tdot[nonzero], ((math.pi - theta) / (2 * math.pi))[nonzero], atol=SQRT_EPS)
    # With a zero-variance input the angle is taken as pi/2 (Neural Tangents' convention).
    assert torch.all(Tdot[~nonzero] == 0.25)


def test_default_quadrature_degree_reaches_1e_minus_6_on_smooth_functions():
    q1, q2, K = _covariances(seed=4)
    for layer in (wn.Erf(), wn.Gelu(), wn.Sin(1.0, 1.3, 0.2)):
        T, Tdot, _ = _dual(layer, q1, q2, K)
        T_q, Tdot_q, _ = _dual(wn.Elementwise(layer.fn), q1, q2, K)
        assert torch.allclose(T_q, T, rtol=1e-6, atol=1e-6 * T.abs().max())
        assert torch.allclose(Tdot_q, Tdot, rtol=1e-6, atol=1e-6 * Tdot.abs().max())
    T, Tdot, _ = _dual(wn.Tanh(), q1, q2, K)
    T_ref, Tdot_ref, _ = _dual(wn.Elementwise(torch.tanh, degree=300), q1, q2, K)
    assert torch.allclose(T, T_ref, rtol=1e-6, atol=1e-6 * T_ref.abs().max())
    assert torch.allclose(Tdot, Tdot_ref, rtol=1e-6, atol=1e-6 * Tdot_ref.abs().max())


def test_hermite_is_a_power_of_the_correlation_for_unit_variances():
    q = torch.ones(5, dtype=torch.float64)
    K = torch.linspace(-1, 1, 5, dtype=torch.float64)
    T, Tdot, var = _dual(wn.Hermite(4), q, q, K)
    assert torch.allclose(T, K**4, atol=1e-13)
    assert torch.allclose(Tdot, 4 * K**3, atol=1e-13)
    assert torch.allclose(var, q, atol=1e-13)
