"""Window pooling (src/widenet/layers/pooling.py)."""

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract, LayerContract
from oracles import monte_carlo, rel_frobenius
from widenet.errors import NoClosedFormError, ParameterError

TOL = 0.05


class _PoolContract(KernelContract):
    input_shape = (2, 5, 4)
    twin = "PoolModule"
    mc_samples = 64

    def network(self, width, parameterization="ntk", **params):
        return wn.Serial(wn.Conv(width, 3, W_std=1.4, b_std=0.2, parameterization=parameterization), wn.Relu(),
                         self.layer_type(**params), wn.Flatten(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))


class TestAvgPool(_PoolContract):
    layer_type = wn.AvgPool
    params = {"window": 2, "stride": 1, "padding": "same"}
    bad = (
        (lambda: wn.AvgPool(0), ParameterError, r"AvgPool: window must be an integer >= 1 \(got 0\)"),
        (lambda: wn.AvgPool(2, padding="full"), ParameterError,
         r"AvgPool: padding must be one of 'same', 'valid', 'circular' \(got 'full'\)"),
    )


class TestSumPool(_PoolContract):
    layer_type = wn.SumPool
    params = {"window": (2, 3), "padding": "circular"}
    bad = ((lambda: wn.SumPool(2, stride=(1, 0)), ParameterError, r"SumPool: stride\[1\] must be an integer >= 1 \(got 0\)"),)


class TestMaxPool(LayerContract):
    input_shape = (2, 6, 6)
    twin = "PoolModule(mode='max'"
    bad = ((lambda: wn.MaxPool((2, 2, 2, 2)), ParameterError, r"MaxPool: window must be an int or 1 to 3 ints"),)

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.Conv(width, 3), wn.Relu(), wn.MaxPool(2), wn.Flatten(), wn.Dense(1))

    def test_kernel_raises_with_advice(self):
        with pytest.raises(NoClosedFormError, match=r"MaxPool: the infinite-width kernel of max pooling has no closed form"):
            self.net().kernel(self.inputs(2))


def _images(shape, n1=3, n2=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n1,) + shape, generator=g, dtype=dtype),
            torch.randn((n2,) + shape, generator=g, dtype=dtype))


def test_residual_myrtle_style_network_matches_monte_carlo():
    block = wn.Serial(wn.FanOut(2), wn.Parallel(wn.Serial(wn.Relu(), wn.Conv(256, 3, W_std=1.2), wn.Relu(),
                                                          wn.Conv(256, 3, W_std=1.2)), wn.Identity()),
                      wn.FanInSum())
    net = wn.Serial(wn.Conv(256, 3, W_std=1.4, b_std=0.1), block, wn.Relu(), wn.AvgPool(2),
                    wn.Conv(256, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(64))
    x1, x2 = _images((2, 4, 4), seed=4)
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=60)
    assert rel_frobenius(nngp, exact.nngp) < TOL
    assert rel_frobenius(ntk, exact.ntk) < TOL


def test_maxpool_and_batchnorm_have_twins_but_no_kernel():
    x, _ = _images((2, 6, 6), n1=4)
    for layer in (wn.MaxPool(2), wn.BatchNorm()):
        net = wn.Serial(wn.Conv(4, 3), wn.Relu(), layer, wn.GlobalAvgPool(), wn.Dense(1))
        with pytest.raises(NoClosedFormError, match=r"wn\.monte_carlo"):
            net.kernel(x)
        assert net.module((2, 6, 6), seed=0, dtype=x.dtype)(x).shape == (4, 1)
        assert net.module(seed=0, dtype=x.dtype)(x).shape == (4, 1)
