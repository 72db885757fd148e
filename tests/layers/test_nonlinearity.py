"""The base of nonlinearities (src/widenet/layers/nonlinearity.py): its order rules and its
public evaluations of the rule."""

import pytest
import torch

import widenet as wn
from widenet.errors import LayerOrderError

X = torch.randn(4, 3, dtype=torch.float64)
NETS = {"relu": wn.Serial(wn.Dense(512, 1.5, 0.05), wn.Relu(), wn.Dense(512, 1.5, 0.05), wn.Relu(), wn.Dense(1, 1.5, 0.05))}


def _x(n, d=5, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("layer", [wn.Relu(), wn.Erf(0.9, 1.2, 0.1), wn.Gelu(), wn.Tanh(), wn.Sin(1.0, 0.8, 0.2)], ids=repr)
def test_dual_variance_and_derivative_agree_with_the_kernel_rule_and_autograd(layer):
    q1 = torch.tensor([0.5, 1.5, 2.0], dtype=torch.float64)
    q2 = torch.tensor([1.0, 0.7, 2.0], dtype=torch.float64)
    k = torch.tensor([0.3, -0.6, 2.0], dtype=torch.float64)
    t, tdot = layer.dual(q1, q2, k)
    kernel = wn.Kernel(torch.diag(k), torch.ones(3, 3, dtype=torch.float64), q1, q2, is_gaussian=True)
    out = layer.apply(kernel)
    # The same rule on flat tensors and on a grid: the same numbers, except for quadrature's
    # contractions, which sum in an order that depends on the shape, and for the ReLU
    # family's fused rule on grids, whose atan2 has a 3.5-ulp bound (engine/test_fused.py).
    tol = {wn.Tanh: 1e-14, wn.Relu: 16 * torch.finfo(torch.float64).eps}.get(type(layer), 0.0)
    assert (t - out.nngp.diagonal()).abs().max() <= tol * t.abs().max()
    assert (tdot - out.ntk.diagonal()).abs().max() <= tol * tdot.abs().max()
    assert torch.allclose(layer.variance(q1), out.var1, rtol=1e-15, atol=0)
    assert torch.allclose(t[2:], layer.variance(q1[2:]), rtol=1e-12)  # k = q1 = q2: T(q, q, q)
    x = torch.linspace(-2, 2, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(layer.fn(x).sum(), x)
    assert torch.allclose(layer.derivative(x.detach()), grad, rtol=1e-12, atol=1e-14)


def test_nonlinearity_needs_a_gaussian_input():
    with pytest.raises(LayerOrderError, match=r"Relu: its input must be Gaussian, i.e. the output of an affine layer"):
        wn.Serial(wn.Relu(), wn.Dense(1)).kernel(X)
    # next to each other in a Serial they compose (tests/layers/test_chain.py); across a
    # branch point they cannot
    with pytest.raises(LayerOrderError, match=r"Erf: its input must be Gaussian.*only next to it in a Serial"):
        wn.Serial(wn.Dense(4), wn.Relu(), wn.FanOut(2), wn.Parallel(wn.Erf(), wn.Identity()),
                  wn.FanInSum()).kernel(X)


def test_single_input_and_zero_norm_inputs_are_finite():
    net = NETS["relu"]
    one = net.kernel(_x(1))
    assert one.nngp.shape == (1, 1) and torch.isfinite(one.ntk).all()
    x = _x(6)
    x[2] = 0
    for layer in (wn.Relu(), wn.Sign(), wn.RectifiedMonomial(0), wn.Erf(), wn.Gelu(), wn.Tanh()):
        k = wn.Serial(wn.Dense(8, 1.0, None), layer, wn.Dense(8, 1.0, None), layer, wn.Dense(1)).kernel(x)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all(), layer
