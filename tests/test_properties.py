"""Structural properties of the kernels and of the finite-width twins."""

import pytest
import torch

import widenet as wn
import widenet.layers.dense as dense_module

NETS = {
    "relu": wn.Serial(wn.Dense(512, 1.5, 0.05), wn.Relu(), wn.Dense(512, 1.5, 0.05), wn.Relu(), wn.Dense(1, 1.5, 0.05)),
    "erf-standard": wn.Serial(wn.Dense(64, 1.2, 0.3, "standard"), wn.Erf(), wn.Dense(8, 0.9, None, "standard")),
    "residual": wn.Serial(wn.Dense(64), wn.FanOut(2), wn.Parallel(wn.Serial(wn.Gelu(), wn.Dense(64)), wn.Identity()),
                          wn.FanInSum(), wn.Tanh(), wn.Dense(1)),
}


def _x(n, d=5, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", list(NETS))
def test_same_inputs_kernel_is_exactly_symmetric_and_psd(name):
    k = NETS[name].kernel(_x(23))
    for m in (k.nngp, k.ntk):
        assert torch.equal(m, m.T)
        assert torch.linalg.eigvalsh(m).min() > -1e-10 * m.diagonal().max()
    assert torch.equal(k.nngp.diagonal(), k.var1)
    assert k.same_inputs and k.var2 is None


@pytest.mark.parametrize("name", list(NETS))
def test_batch_invariance_and_cross_kernel_consistency(name):
    net, x = NETS[name], _x(30, seed=1)
    full = net.kernel(x)
    sub = net.kernel(x[5:12], x[20:29])
    torch.testing.assert_close(sub.nngp, full.nngp[5:12, 20:29], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sub.ntk, full.ntk[5:12, 20:29], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sub.var1, full.var1[5:12], rtol=1e-13, atol=0)
    torch.testing.assert_close(sub.var2, full.var1[20:29], rtol=1e-13, atol=0)


@pytest.mark.parametrize("block_size", [1, 4, 7, 29, 1000])
def test_tile_size_does_not_change_the_result(block_size):
    net, x1, x2 = NETS["relu"], _x(29, seed=2), _x(17, seed=3)
    ref = net.kernel(x1, x2)
    k = net.kernel(x1, x2, block_size=block_size)
    # Equal up to the summation order of the tiles' matrix products.
    torch.testing.assert_close(k.nngp, ref.nngp, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(k.ntk, ref.ntk, rtol=1e-14, atol=1e-14)
    ref_same = net.kernel(x1)
    k_same = net.kernel(x1, block_size=block_size)
    torch.testing.assert_close(k_same.nngp, ref_same.nngp, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(k_same.ntk, ref_same.ntk, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", list(NETS))
def test_float32_agrees_with_float64(name):
    net, x = NETS[name], _x(20, seed=4)
    k64 = net.kernel(x)
    k32 = net.kernel(x.float())
    assert k32.nngp.dtype == torch.float32
    torch.testing.assert_close(k32.nngp.double(), k64.nngp, rtol=1e-4, atol=1e-4 * k64.nngp.abs().max())
    torch.testing.assert_close(k32.ntk.double(), k64.ntk, rtol=1e-4, atol=1e-4 * k64.ntk.abs().max())


def test_single_input_and_zero_norm_inputs_are_finite():
    net = NETS["relu"]
    one = net.kernel(_x(1))
    assert one.nngp.shape == (1, 1) and torch.isfinite(one.ntk).all()
    x = _x(6)
    x[2] = 0
    for layer in (wn.Relu(), wn.Sign(), wn.RectifiedMonomial(0), wn.Erf(), wn.Gelu(), wn.Tanh()):
        k = wn.Serial(wn.Dense(8, 1.0, None), layer, wn.Dense(8, 1.0, None), layer, wn.Dense(1)).kernel(x)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all(), layer


def test_sign_diagonal_is_exact_after_each_layer():
    # E[sign(u)^2] = 1, so after Dense(W, b) the diagonal is exactly W^2 + b^2.
    k = wn.Serial(wn.Dense(8, 1.1, 0.1), wn.Sign(), wn.Dense(8, 1.1, 0.1), wn.Sign(), wn.Dense(1, 1.1, 0.1)).kernel(_x(9))
    assert torch.allclose(k.nngp.diagonal(), torch.full((9,), 1.1**2 + 0.1**2, dtype=torch.float64), rtol=1e-15)


def test_nngp_only_does_no_ntk_work(monkeypatch):
    seen = []
    original = dense_module.Dense._rule

    def spy(self, flow):
        seen.append(flow.ntk is None)
        return original(self, flow)

    monkeypatch.setattr(dense_module.Dense, "_rule", spy)
    net, x = NETS["relu"], _x(7)
    nngp = net.nngp(x)
    assert seen and all(seen)
    monkeypatch.undo()
    assert torch.equal(nngp, net.kernel(x).nngp)
    assert torch.equal(net.ntk(x), net.kernel(x).ntk)


def test_numpy_inputs_and_apply_on_kernels():
    net, x = NETS["erf-standard"], _x(6, seed=5)
    torch.testing.assert_close(net.kernel(x.numpy()).ntk, net.kernel(x).ntk, rtol=0, atol=0)
    first, rest = wn.Dense(64, 1.2, 0.3, "standard"), wn.Serial(wn.Erf(), wn.Dense(8, 0.9, None, "standard"))
    staged = rest.apply(first.kernel(x))
    torch.testing.assert_close(staged.nngp, net.kernel(x).nngp, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(staged.ntk, net.kernel(x).ntk, rtol=1e-14, atol=1e-14)


def test_module_is_reproducible_and_lazy_equals_eager():
    net, x = NETS["relu"], _x(4)
    a = net.module(5, seed=3, dtype=torch.float64)
    b = net.module(5, seed=3, dtype=torch.float64)
    lazy = net.module(seed=3, dtype=torch.float64)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), lazy(x))
    assert not torch.equal(a(x), net.module(5, seed=4, dtype=torch.float64)(x))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(net.module(5, generator=g1, dtype=torch.float64)(x),
                       net.module(5, generator=g2, dtype=torch.float64)(x))
    assert net.module(5)(x.float()).shape == (4, 1)


def test_standard_parameterization_draws_weights_with_variance_w_std_squared_over_fan_in():
    net = wn.Serial(wn.Dense(2000, 1.7, 0.4, "standard"))
    m = net.module(500, seed=0, dtype=torch.float64)
    dense = m[0]
    assert abs(dense.weight.var().item() / (1.7**2 / 500) - 1) < 0.01
    assert abs(dense.bias.var().item() / 0.4**2 - 1) < 0.1


def test_layers_are_frozen_and_round_trip_through_repr():
    layer = wn.Dense(3, W_std=2.0, b_std=None, parameterization="standard")
    with pytest.raises(Exception):
        layer.W_std = 1.0
    assert eval(repr(layer), {"Dense": wn.Dense}) == layer
    assert wn.Serial(wn.Dense(3), wn.Relu()) == wn.Serial(wn.Dense(3), wn.Relu())
