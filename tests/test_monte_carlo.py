"""Exact kernels against Monte Carlo over their finite-width twins (REFERENCE oracle 1)."""

import random

import pytest
import torch

import widenet as wn
from oracles import monte_carlo, rel_frobenius

# NT's own Monte Carlo tests use width 1024, 100-800 networks and 4-6% relative Frobenius.
TOL = 0.05


def _inputs(seed=0, n1=4, n2=3, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n1, d, generator=g, dtype=dtype), torch.randn(n2, d, generator=g, dtype=dtype)


SMOOTH_AND_KINKED = [
    wn.Relu(), wn.LeakyRelu(0.2), wn.ABRelu(-0.4, 1.3), wn.Abs(), wn.Erf(1.1, 0.8, 0.2),
    wn.SigmoidLike(), wn.Gelu(), wn.Sin(1.0, 0.9, 0.3), wn.Cos(1.0, 1.1, 0.1), wn.Rbf(0.4),
    wn.Sign(), wn.Exp(0.6, 0.5), wn.Gaussian(1.0, -0.4), wn.Monomial(2), wn.Monomial(3),
    wn.RectifiedMonomial(0), wn.RectifiedMonomial(2), wn.Hermite(3),
    wn.Polynomial((0.2, -0.6, 0.4)), wn.Identity(), wn.Tanh(),
    wn.Elementwise(torch.nn.functional.silu, name="silu"),
]


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("act", SMOOTH_AND_KINKED, ids=repr)
def test_every_nonlinearity_matches_monte_carlo(act, parameterization):
    x1, x2 = _inputs()
    net = wn.Serial(wn.Dense(1024, 1.3, 0.2, parameterization), act,
                    wn.Dense(256, 0.9, 0.1, parameterization))
    exact = net.kernel(x1, x2)
    # Cubic outputs have heavy tails: the Monte Carlo estimate needs more networks.
    heavy = isinstance(act, (wn.Monomial, wn.Hermite)) and act.degree >= 3
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=800 if heavy else 200,
                            ntk=not isinstance(act, wn.Sign))
    assert rel_frobenius(nngp, exact.nngp) < TOL
    if ntk is not None:  # sign's derivative is 0 a.e.; its finite NTK is just the readout's
        assert rel_frobenius(ntk, exact.ntk) < TOL


def _random_net(depth, parameterization, rng):
    acts = [wn.Relu(), wn.Erf(), wn.Gelu(), wn.Sin(), wn.LeakyRelu(0.1), wn.Tanh()]
    layers = []
    for _ in range(depth):
        b_std = rng.choice([None, 0.0, 0.1, 0.3])
        layers += [wn.Dense(1024, rng.uniform(0.8, 1.6), b_std, parameterization), rng.choice(acts)]
    return wn.Serial(*layers, wn.Dense(128, rng.uniform(0.8, 1.6), 0.1, parameterization))


@pytest.mark.parametrize("depth,parameterization", [(1, "ntk"), (2, "standard"), (2, "ntk"),
                                                     (3, "ntk"), (4, "standard")])
def test_random_compositions_match_monte_carlo(depth, parameterization):
    rng = random.Random(100 * depth + len(parameterization))
    net = _random_net(depth, parameterization, rng)
    x1, x2 = _inputs(seed=depth, n1=3, n2=2, dtype=torch.float32)
    exact = net.kernel(x1.double(), x2.double())
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=200)
    assert rel_frobenius(nngp.double(), exact.nngp) < TOL, net
    assert rel_frobenius(ntk.double(), exact.ntk) < TOL, net


COMBINATOR_NETS = {
    "residual-sum": wn.Serial(
        wn.Dense(512, 1.2, 0.1),
        wn.FanOut(2),
        wn.Parallel(wn.Serial(wn.Relu(), wn.Dense(512, 1.4, 0.0)), wn.Identity()),
        wn.FanInSum(), wn.Erf(), wn.Dense(128, 1.0, 0.1)),
    "product": wn.Serial(
        wn.FanOut(2),
        wn.Parallel(wn.Serial(wn.Dense(512, 1.1, 0.2), wn.Sin()),
                    wn.Serial(wn.Dense(512, 0.9, 0.3), wn.Relu())),
        wn.FanInProd(), wn.Dense(128, 1.0, 0.1)),
    "concat-standard": wn.Serial(
        wn.FanOut(2),
        wn.Parallel(wn.Serial(wn.Dense(768, 1.1, 0.2, "standard"), wn.Relu()),
                    wn.Serial(wn.Dense(256, 1.3, 0.1, "standard"), wn.Gelu())),
        wn.FanInConcat(), wn.Dense(128, 1.0, 0.1, "standard")),
    "repeat": wn.Serial(wn.Repeat(wn.Serial(wn.Dense(512, 1.3, 0.1), wn.Relu()), 2), wn.Dense(128)),
}


@pytest.mark.parametrize("name", list(COMBINATOR_NETS))
def test_combinators_match_monte_carlo(name):
    net = COMBINATOR_NETS[name]
    x1, x2 = _inputs(seed=7, n1=3, n2=3, dtype=torch.float32)
    exact = net.kernel(x1.double(), x2.double())
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=200)
    assert rel_frobenius(nngp.double(), exact.nngp) < TOL
    assert rel_frobenius(ntk.double(), exact.ntk) < TOL


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
