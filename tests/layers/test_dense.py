"""Fully connected layers (src/widenet/layers/dense.py)."""

import math

import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import monte_carlo, rel_frobenius
from widenet.errors import ParameterError

TOL = 0.05


class TestDense(KernelContract):
    params = {"W_std": 1.4, "b_std": 0.3}
    float_params = ("W_std", "b_std")
    twin = "DenseModule"
    mc_width = 512
    mc_samples = 200
    parameterizations = ("ntk", "standard")
    bad = (
        (lambda: wn.Dense(0), ParameterError, r"Dense: out_features must be an integer >= 1 \(got 0\)"),
        (lambda: wn.Dense(2.5), ParameterError, r"Dense: out_features must be an integer >= 1 \(got 2.5\)"),
        (lambda: wn.Dense(3, W_std=-1.0), ParameterError, r"Dense: W_std must be a finite float >= 0 \(got -1.0\)"),
        (lambda: wn.Dense(3, b_std=-0.1), ParameterError, r"Dense: b_std must be a finite float >= 0 or None \(got -0.1\)"),
        (lambda: wn.Dense(3, W_std=math.nan), ParameterError, r"Dense: W_std must be a finite float >= 0 \(got nan\)"),
        (lambda: wn.Dense(3, parameterization="mup"), ParameterError,
         r"Dense: parameterization must be one of 'ntk', 'standard' \(got 'mup'\)"),
    )

    def network(self, width, parameterization="ntk", W_std=1.4, b_std=0.3):
        return wn.Serial(wn.Dense(width, W_std, b_std, parameterization), wn.Erf(),
                         wn.Dense(min(width, 256), W_std, b_std, parameterization))


def _inputs(seed=0, n1=4, n2=3, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n1, d, generator=g, dtype=dtype), torch.randn(n2, d, generator=g, dtype=dtype)


def test_monte_carlo_error_falls_with_width():
    x1, x2 = _inputs(seed=3, n1=3, n2=3)
    errors = []
    for width in (64, 256, 1024):
        net = wn.Serial(wn.Dense(width, 1.5, 0.1), wn.Relu(), wn.Dense(width, 1.5, 0.1), wn.Erf(),
                        wn.Dense(64, 1.0, 0.0))
        exact = net.kernel(x1, x2)
        _, ntk = monte_carlo(net, x1, x2, n_samples=100, seed=width)
        errors.append(rel_frobenius(ntk, exact.ntk))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.02, errors


def test_standard_parameterization_draws_weights_with_variance_w_std_squared_over_fan_in():
    net = wn.Serial(wn.Dense(2000, 1.7, 0.4, "standard"))
    m = net.module(500, seed=0, dtype=torch.float64)
    dense = m[0]
    assert abs(dense.weight.var().item() / (1.7**2 / 500) - 1) < 0.01
    assert abs(dense.bias.var().item() / 0.4**2 - 1) < 0.1
