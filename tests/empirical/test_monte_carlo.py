"""wn.monte_carlo: converges to the analytic kernels, its standard errors are honest, and it
gives kernels to layers without a closed form."""

import pytest
import torch

import widenet as wn
from widenet.errors import NoClosedFormError, ParameterError

D = torch.float64


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_converges_to_analytic_kernels_within_standard_errors():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(5, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D)
    net = wn.Serial(wn.Dense(512, 1.5, 0.1), wn.Erf(), wn.Dense(16, 1.5, 0.1))
    exact = net.kernel(x1, x2)
    mc = wn.monte_carlo(net, x1, x2, n_samples=100, seed=1)
    assert mc.n_samples == 100 and mc.var2.shape == (3,)
    for est, se, ref in ((mc.nngp, mc.nngp_stderr, exact.nngp), (mc.ntk, mc.ntk_stderr, exact.ntk)):
        assert _rel(est, ref) < 0.05  # REFERENCE.md oracle 1 tolerance
        z = ((est - ref) / se).abs()
        assert float((z < 3).double().mean()) >= 0.85, z  # errors are of the size of the standard errors
    # Two independent estimates differ by what their standard errors say.
    other = wn.monte_carlo(net, x1, x2, n_samples=100, seed=1000)
    z = (mc.nngp - other.nngp) / (mc.nngp_stderr**2 + other.nngp_stderr**2).sqrt()
    assert 0.5 < float(z.std()) < 2.0


def test_convolutional_network_and_factory():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 5, 5, generator=g, dtype=D)
    net = wn.Serial(wn.Conv(128, 3, padding="same", W_std=1.4, b_std=0.1), wn.Relu(), wn.GlobalAvgPool(),
                    wn.Dense(8, 1.4, 0.1))
    exact = net.kernel(x)
    mc = wn.monte_carlo(net, x, n_samples=32)
    assert _rel(mc.ntk, exact.ntk) < 0.06 and _rel(mc.nngp, exact.nngp) < 0.1
    same = wn.monte_carlo(lambda s: net.module((1, 5, 5), seed=s, dtype=D), x, n_samples=32)
    assert torch.equal(same.ntk, mc.ntk)  # a factory with the same seeds gives the same estimate


def test_kernels_for_layers_without_closed_form():
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=D)
    net = wn.Serial(wn.Conv(32, 3, W_std=1.4), wn.Relu(), wn.MaxPool(2), wn.Flatten(), wn.Dense(4))
    with pytest.raises(NoClosedFormError, match="wn.monte_carlo"):
        net.kernel(x)
    mc = wn.monte_carlo(net, x, n_samples=8)
    assert mc.ntk.shape == (4, 4) and bool(torch.isfinite(mc.ntk).all())
    assert torch.equal(mc.ntk, mc.ntk.T)
    with pytest.raises(ParameterError, match="net must be a widenet architecture or a factory"):
        wn.monte_carlo(3, x)
    with pytest.raises(ParameterError, match="must return a torch.nn.Module"):
        wn.monte_carlo(lambda s: None, x, n_samples=1)
