"""Polynomial nonlinearities (src/widenet/layers/polynomial.py)."""

import torch

import widenet as wn
from layers.contract import NonlinearityContract, dual
from widenet.errors import ParameterError


class TestPolynomial(NonlinearityContract):
    layer_type = wn.Polynomial
    params = {"coef": (0.2, -0.6, 0.4)}
    bad = ((lambda: wn.Polynomial(()), ParameterError, r"Polynomial: coef must be a non-empty sequence of floats"),)

    def dual_cases(self):
        return [{"coef": (0.2, -0.6, 0.4, 0.1)}]


class TestMonomial(NonlinearityContract):
    layer_type = wn.Monomial
    params = {"degree": 2}
    bad = ((lambda: wn.Monomial(-1), ParameterError, r"Monomial: degree must be an integer >= 0 \(got -1\)"),)

    def mc_cases(self):
        # Cubic outputs have heavy tails: the Monte Carlo estimate needs more networks.
        return [({"degree": 2}, 200), ({"degree": 3}, 800)]

    def dual_cases(self):
        return [{"degree": 0}, {"degree": 1}, {"degree": 4}]


class TestHermite(NonlinearityContract):
    layer_type = wn.Hermite
    params = {"degree": 3}
    mc_samples = 800  # cubic outputs have heavy tails
    bad = ((lambda: wn.Hermite(1.5), ParameterError, r"Hermite: degree must be an integer >= 0 \(got 1.5\)"),)

    def dual_cases(self):
        return [{"degree": 0}, {"degree": 2}, {"degree": 5}]

    def nt_network(self):
        # Neural Tangents' Hermite kernel is K^n, exact for unit-variance inputs only (widenet's
        # is exact for any variance): LayerNorm gives them unit variance.
        return wn.Serial(wn.Dense(64, 1.3, 0.2), wn.LayerNorm(), wn.Hermite(3), wn.Dense(64, 0.9, 0.1))


def test_hermite_is_a_power_of_the_correlation_for_unit_variances():
    q = torch.ones(5, dtype=torch.float64)
    K = torch.linspace(-1, 1, 5, dtype=torch.float64)
    T, Tdot, var = dual(wn.Hermite(4), q, q, K)
    assert torch.allclose(T, K**4, atol=1e-13)
    assert torch.allclose(Tdot, 4 * K**3, atol=1e-13)
    assert torch.allclose(var, q, atol=1e-13)
