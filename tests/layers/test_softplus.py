"""Softplus (src/widenet/layers/softplus.py)."""

import torch

import widenet as wn
from layers.contract import NonlinearityContract, covariances, dual
from widenet.errors import ParameterError


class TestSoftplus(NonlinearityContract):
    layer_type = wn.Softplus
    params = {"beta": 1.5}
    float_params = ("beta",)
    reproducible_tol = 1e-6  # both orders of the pair's quadrature differ by its error
    bad = ((lambda: wn.Softplus(0.0), ParameterError, r"Softplus: beta must be a finite float > 0 \(got 0.0\)"),
           (lambda: wn.Softplus(1.0, degree=1), ParameterError, r"Softplus: degree must be an integer >= 2 \(got 1\)"))

    def test_dual_activation_matches_an_independent_integral(self):
        # No closed form: the default degree against degree 300 of torch's own softplus.
        q1, q2, K = covariances(seed=4)
        reference = wn.Elementwise(lambda x: torch.nn.functional.softplus(x, beta=1.5), degree=300)
        for ours, theirs in zip(dual(wn.Softplus(1.5), q1, q2, K), dual(reference, q1, q2, K)):
            assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6 * theirs.abs().max())


def test_large_beta_approaches_relu():
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    relu = wn.Serial(wn.Dense(8, 1.2, 0.1), wn.Relu(), wn.Dense(1)).kernel(x)
    smooth = wn.Serial(wn.Dense(8, 1.2, 0.1), wn.Softplus(200.0, degree=400), wn.Dense(1)).kernel(x)
    for name in ("nngp", "ntk"):
        a, b = getattr(smooth, name), getattr(relu, name)
        assert (a - b).abs().max() <= 1e-3 * b.abs().max(), name
