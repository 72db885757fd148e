"""Merging branches (src/widenet/layers/fan_in.py): sum, product, concatenation."""

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract
from widenet.errors import LayerOrderError, ParameterError


class _FanInContract(KernelContract):
    twin = "FanInModule"
    mc_width = 512
    mc_samples = 100
    parameterizations = ("ntk", "standard")


class TestFanInSum(_FanInContract):
    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.Dense(width, 1.2, 0.1, parameterization), wn.FanOut(2),
                         wn.Parallel(wn.Serial(wn.Relu(), wn.Dense(width, 1.4, 0.0, parameterization)),
                                     wn.Identity()),
                         wn.FanInSum(), wn.Erf(), wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


class TestFanInProd(_FanInContract):
    # Products of two features have heavy tails: the estimate needs more networks, and
    # positive kernels (ReLU, GELU) keep the products of cross-kernels away from zero.
    mc_width = 256
    mc_samples = 200
    parameterizations = ("ntk",)

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.FanOut(2),
                         wn.Parallel(wn.Serial(wn.Dense(width, 1.1, 0.6, parameterization), wn.Gelu()),
                                     wn.Serial(wn.Dense(width, 0.9, 0.7, parameterization), wn.Relu())),
                         wn.FanInProd(), wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


class TestFanInConcat(_FanInContract):
    twin = "FanInModule(mode='concat', axis=1)"
    bad = ((lambda: wn.FanInConcat(axis=0), ParameterError, r"FanInConcat: axis must be 1 or -1"),)

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.FanOut(2),
                         wn.Parallel(wn.Serial(wn.Dense(width * 3 // 4, 1.1, 0.2, parameterization), wn.Relu()),
                                     wn.Serial(wn.Dense(width // 4, 1.3, 0.1, parameterization), wn.Gelu())),
                         wn.FanInConcat(), wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


X = torch.randn(4, 3, dtype=torch.float64)


def test_nonlinearity_after_concatenation_is_refused():
    net = wn.Serial(wn.Dense(4), wn.FanOut(2), wn.Parallel(wn.Relu(), wn.Erf()), wn.FanInConcat(), wn.Gelu())
    with pytest.raises(LayerOrderError, match=r"Gelu: its input must be Gaussian"):
        net.kernel(X)
