"""Nonlinearities in a row (src/widenet/layers/chain.py): the dual of the composition."""

import math

import pytest
import torch
from scipy import integrate, special

import widenet as wn
from layers.contract import NonlinearityContract, covariances, dual
from oracles import monte_carlo, rel_frobenius
from widenet.errors import LayerOrderError, ParameterError

D = torch.float64


class TestChain(NonlinearityContract):
    """``Serial(Dense, LeakyRelu(alpha), Erf(), Dense)``: the run is merged into a Chain,
    whose kernel (the polar rule) is checked against the twin that applies the two layers
    one after the other, and its dual against bivariate Monte Carlo of erf(leaky(z))."""

    params = {"alpha": 0.2}
    float_params = ("alpha",)
    dual_oracle = "monte_carlo"
    bad = (
        (lambda: wn.Chain(wn.Relu()), ParameterError, r"Chain: needs at least two nonlinearities \(got 1\)"),
        (lambda: wn.Chain(wn.Dense(2), wn.Relu()), ParameterError,
         r"Chain: layers must be elementwise nonlinearities \(got Dense at position 0\)"),
        (lambda: wn.Chain(wn.Relu(), wn.Erf(), degree=1), ParameterError, r"Chain: degree must be"),
    )

    def layer(self, alpha):
        return wn.Chain(wn.LeakyRelu(alpha), wn.Erf())

    def network(self, width, parameterization="ntk", alpha=0.2):
        return wn.Serial(wn.Dense(width, 1.3, 0.2, parameterization), wn.LeakyRelu(alpha), wn.Erf(),
                         wn.Dense(min(width, 256), 0.9, 0.1, parameterization))


def _quadrant_integral(f, q1, q2, rho):
    """``E[f(u, v)]`` over the positive quadrant of ``N(0, [[q1, c], [c, q2]])`` by adaptive
    two-dimensional integration (scipy), the rest of the plane contributing nothing."""
    c = rho * math.sqrt(q1 * q2)
    det = q1 * q2 - c * c

    def integrand(v, u):
        density = math.exp(-(q2 * u * u - 2 * c * u * v + q1 * v * v) / (2 * det)) / (2 * math.pi * math.sqrt(det))
        return f(u, v) * density

    return integrate.dblquad(integrand, 0, 12 * math.sqrt(q1), 0, 12 * math.sqrt(q2), epsabs=1e-13, epsrel=1e-12)[0]


def test_relu_then_erf_is_exact_against_adaptive_integration_where_gauss_hermite_is_not():
    chain = wn.Chain(wn.Relu(), wn.Erf())
    gh = wn.Elementwise(chain.fn, dfn=chain.derivative)  # what the composition cost before: a kink inside
    d_erf = 2 / math.sqrt(math.pi)
    gh_worst = 0.0
    for q1, q2, rho in [(1.0, 1.0, 0.3), (0.7, 2.5, -0.6), (1.5, 1.2, 0.95), (3.0, 0.5, 0.0)]:
        k = rho * math.sqrt(q1 * q2)
        T, Tdot = chain.dual(q1, q2, k)
        want_T = _quadrant_integral(lambda u, v: special.erf(u) * special.erf(v), q1, q2, rho)
        want_D = _quadrant_integral(lambda u, v: d_erf**2 * math.exp(-u * u - v * v), q1, q2, rho)
        assert abs(float(T) - want_T) <= 1e-12 and abs(float(Tdot) - want_D) <= 1e-12, (q1, q2, rho)
        gh_T, gh_D = gh.dual(q1, q2, k)
        gh_worst = max(gh_worst, abs(float(gh_T) - want_T), abs(float(gh_D) - want_D))
    assert gh_worst > 1e-4  # the reason for the polar rule


def test_relu_family_chains_are_the_closed_form_of_their_composition():
    z = torch.linspace(-3, 3, 61, dtype=D)
    x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    cases = [(wn.Relu(), wn.LeakyRelu(0.1)), (wn.Abs(), wn.LeakyRelu(0.1)), (wn.LeakyRelu(-0.5), wn.Abs()),
             (wn.ABRelu(-0.5, 1.2), wn.ABRelu(0.3, -2.0), wn.Relu())]
    for layers in cases:
        chain = wn.Chain(*layers)
        closed = chain.closed_form
        assert isinstance(closed, wn.ABRelu)
        composed = z
        for layer in layers:
            composed = layer.fn(composed)
        assert torch.allclose(closed.fn(z), composed, rtol=0, atol=1e-15), layers
        ours = wn.Serial(wn.Dense(1, 1.2, 0.1), *layers, wn.Dense(1)).kernel(x)
        direct = wn.Serial(wn.Dense(1, 1.2, 0.1), closed, wn.Dense(1)).kernel(x)
        assert torch.equal(ours.nngp, direct.nngp) and torch.equal(ours.ntk, direct.ntk)


def test_smooth_chains_equal_one_elementwise_of_the_composed_function():
    x = 0.6 * torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    chained = wn.Serial(wn.Dense(1, 0.7, 0.1), wn.Tanh(), wn.Sin(), wn.Dense(1)).kernel(x)
    composed = wn.Serial(wn.Dense(1, 0.7, 0.1), wn.Elementwise(lambda t: torch.sin(torch.tanh(t))),
                         wn.Dense(1)).kernel(x)
    assert torch.allclose(chained.nngp, composed.nngp, rtol=1e-12, atol=0)
    assert torch.allclose(chained.ntk, composed.ntk, rtol=1e-12, atol=0)
    # and the polar rule's kinked chain against the composed function at a high degree,
    # within that rule's own error (about 1e-4 for a kink at degree 1000)
    q1, q2, K = covariances(n=12, seed=5)
    keep = (q1 > 0) & (q2 > 0)
    T, Tdot, _ = dual(wn.Chain(wn.Relu(), wn.Gelu()), q1[keep], q2[keep], K[keep])
    g = wn.Chain(wn.Relu(), wn.Gelu())
    T_gh, Tdot_gh, _ = dual(wn.Elementwise(g.fn, dfn=g.derivative, degree=1000), q1[keep], q2[keep], K[keep])
    assert float((T - T_gh).abs().max()) < 1e-4 * float(T.abs().max())


def test_three_nonlinearities_across_nested_serials_match_monte_carlo_of_the_twin():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, dtype=D, generator=g)
    net = wn.Serial(wn.Dense(1024, 1.4, 0.2), wn.Serial(wn.Relu(), wn.Tanh()), wn.Gelu(), wn.Dense(256, 1.1, 0.1))
    exact = net.kernel(x)
    nngp, ntk = monte_carlo(net, x, x, n_samples=200)
    assert rel_frobenius(nngp, exact.nngp) < 0.05
    assert rel_frobenius(ntk, exact.ntk) < 0.05
    # a wrong kernel fails the same check: the chain read as its last layer alone
    wrong = wn.Serial(wn.Dense(1024, 1.4, 0.2), wn.Gelu(), wn.Dense(256, 1.1, 0.1)).kernel(x)
    assert rel_frobenius(nngp, wrong.nngp) > 0.05


def test_a_chain_still_needs_a_gaussian_input():
    with pytest.raises(LayerOrderError, match=r"Chain\(Relu\(\), Erf\(.*\)\): its input must be Gaussian"):
        wn.Serial(wn.Relu(), wn.Erf(), wn.Dense(1)).kernel(torch.randn(3, 2))
