"""Fixtures shared by the tests of widenet.predict: kernels of one network on random inputs
(``data``) and a random positive-definite full-output kernel (``full``)."""

import pytest
import torch

import widenet as wn

D = torch.float64


def _net():
    return wn.Serial(wn.Dense(512, 1.5, 0.1), wn.Relu(), wn.Dense(512, 1.5, 0.1), wn.Relu(), wn.Dense(1, 1.5, 0.1))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(14, 5, generator=g, dtype=D)
    xt = torch.randn(6, 5, generator=g, dtype=D)
    y = torch.randn(14, 3, generator=g, dtype=D)
    net = _net()
    return dict(x=x, xt=xt, y=y, net=net, k=net.kernel(x), kt=net.kernel(xt, x), ktt=net.kernel(xt))


def _random_full(n1, n2, o, g, like=None):
    """A positive-definite joint kernel over (point, output) pairs, cross-output terms included."""
    feats = torch.randn(n1 + n2, o, 3 * (n1 + n2) * o, generator=g, dtype=D)
    joint = torch.einsum("aip,bjp->abij", feats, feats) / feats.shape[-1]
    return joint[:n1, :n1], joint[n1:, :n1], joint[n1:, n1:]


@pytest.fixture
def full():
    g = torch.Generator().manual_seed(3)
    n, m, o = 7, 5, 3
    ktt, ktd, kss = _random_full(n, m, o, g)
    y = torch.randn(n, o, generator=g, dtype=D)
    return ktt, ktd, kss, y
