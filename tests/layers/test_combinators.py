"""Combinators (src/widenet/layers/combinators.py): Serial, Parallel, FanOut, Repeat."""

import random

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import monte_carlo, rel_frobenius
from widenet.errors import LayerOrderError, ParameterError, ShapeError

TOL = 0.05


class _CombinatorContract(KernelContract):
    mc_width = 512
    mc_samples = 100


class TestSerial(_CombinatorContract):
    twin = "SerialModule"
    bad = (
        (lambda: wn.Serial(), ParameterError, r"Serial: layers must hold at least one layer \(got none\)"),
        (lambda: wn.Serial(wn.Relu(), torch.nn.ReLU()), ParameterError,
         r"Serial: layers must be widenet layers \(got ReLU at position 1\)"),
    )

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.Dense(width, 1.3, 0.1, parameterization), wn.Serial(wn.Relu(), wn.Dense(width)),
                         wn.Gelu(), wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


class TestParallel(_CombinatorContract):
    twin = "ParallelModule"
    bad = ((lambda: wn.Parallel(), ParameterError, r"Parallel: layers must hold at least one layer \(got none\)"),)

    def network(self, width, parameterization="ntk"):
        # Branches with independent weights: the sum of independent Gaussian processes.
        return wn.Serial(wn.Dense(width, 1.2, 0.1, parameterization), wn.FanOut(2),
                         wn.Parallel(wn.Serial(wn.Relu(), wn.Dense(width, 1.4, 0.0, parameterization)),
                                     wn.Serial(wn.Erf(), wn.Dense(width, 1.1, 0.2, parameterization))),
                         wn.FanInSum(), wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


class TestFanOut(_CombinatorContract):
    twin = "FanOutModule(num=3)"
    bad = ((lambda: wn.FanOut(0), ParameterError, r"FanOut: num must be an integer >= 1 \(got 0\)"),)

    def network(self, width, parameterization="ntk"):
        # A shared input and branches that end in independent weights (or pass it on): the
        # branches are uncorrelated, as FanInSum's rule assumes.
        return wn.Serial(wn.Dense(width, 1.2, 0.1, parameterization), wn.FanOut(3),
                         wn.Parallel(wn.Serial(wn.Relu(), wn.Dense(width, 1.3, 0.0, parameterization)),
                                     wn.Identity(),
                                     wn.Serial(wn.Sin(), wn.Dense(width, 0.9, 0.1, parameterization))),
                         wn.FanInSum(), wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


class TestRepeat(_CombinatorContract):
    twin = "SerialModule"
    bad = (
        (lambda: wn.Repeat(wn.Relu(), 0), ParameterError, r"Repeat: n must be an integer >= 1 \(got 0\)"),
        (lambda: wn.Repeat("relu", 2), ParameterError, r"Repeat: layer must be a widenet layer \(got str\)"),
    )

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.Repeat(wn.Serial(wn.Dense(width, 1.3, 0.1, parameterization), wn.Relu()), 2),
                         wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


def _inputs(seed=0, n1=4, n2=3, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n1, d, generator=g, dtype=dtype), torch.randn(n2, d, generator=g, dtype=dtype)


X = torch.randn(4, 3, dtype=torch.float64)


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


def test_branch_errors():
    with pytest.raises(LayerOrderError, match=r"Dense: expected one branch but received 2; merge branches"):
        wn.Serial(wn.FanOut(2), wn.Dense(3)).kernel(X)
    with pytest.raises(LayerOrderError, match=r"Serial.kernel: the network ends with 2 branches"):
        wn.Serial(wn.Dense(3), wn.FanOut(2)).kernel(X)
    with pytest.raises(LayerOrderError, match=r"FanInSum: expected a tuple of branches"):
        wn.Serial(wn.Dense(3), wn.FanInSum()).kernel(X)
    with pytest.raises(LayerOrderError, match=r"Parallel: has 2 layers but received 3 branch\(es\)"):
        wn.Serial(wn.FanOut(3), wn.Parallel(wn.Dense(2), wn.Dense(2))).kernel(X)
    with pytest.raises(ShapeError, match=r"FanInSum: branches must have equal widths \(got 3, 5\)"):
        wn.Serial(wn.FanOut(2), wn.Parallel(wn.Dense(3), wn.Dense(5)), wn.FanInSum()).kernel(X)


def test_a_branch_that_removes_positions_does_not_change_how_the_others_are_built():
    """Twins are built from a Shape per branch: a global pool in one branch used to set the
    spatial dimensions of every layer built after it, the other branches' included."""
    net = wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.FanOut(2),
                    wn.Parallel(wn.Serial(wn.GlobalAvgPool(), wn.Dense(8)),
                                wn.Serial(wn.AvgPool(2), wn.BatchNorm(), wn.Flatten(), wn.Dense(8))),
                    wn.FanInSum())
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = net.module((2, 6, 6), seed=0, dtype=torch.float64)
    assert model(x).shape == (3, 8)
    assert "PoolModule(mode='avg', window=(2, 2), stride=(2, 2)" in repr(model) and "BatchNorm2d" in repr(model)
    lazy = net.module(seed=0, dtype=torch.float64)  # shapes learned from the first input
    assert lazy(x).shape == (3, 8)
