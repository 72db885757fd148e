"""Derivatives and square roots (src/widenet/_engine/autodiff.py).

The faster float64 square root is checked against correctly rounded ones (``math.sqrt``);
reverse-mode derivatives through in-place rules against forward-mode ones and finite
differences.
"""

import math

import numpy as np
import pytest
import torch

import widenet as wn
from oracles import ulps as _ulps
from widenet._engine import exact as _exact
from widenet._engine import safe_sqrt

D = torch.float64


# ---- square roots ---------------------------------------------------------------------------

def test_float64_square_roots_are_within_one_and_a_half_ulp_and_exact_at_zero():
    g = torch.Generator().manual_seed(0)
    mantissa = torch.rand(20000, generator=g, dtype=D) + 0.5
    exponent = torch.randint(-300, 300, (20000,), generator=g).to(D)
    t = torch.cat([mantissa * 10.0**exponent, torch.tensor([0.0, 1.0, 4.0, 2.0, 1e-300, 1e300], dtype=D)])
    exact = np.array([math.sqrt(v) for v in t.tolist()])
    root = safe_sqrt(t.clone())
    assert root[-6:-2].tolist() == [0.0, 1.0, 2.0, math.sqrt(2.0)]
    assert _ulps(root[np.nonzero(exact)[0]], exact[exact > 0]).max() <= 1.5
    assert safe_sqrt(torch.tensor([math.inf], dtype=D)).item() == math.inf


def test_reproducible_mode_and_float32_keep_the_correctly_rounded_square_root():
    t = torch.rand(5000, generator=torch.Generator().manual_seed(1), dtype=D) * 7
    with _exact.enabled():
        assert torch.equal(safe_sqrt(t.clone()), torch.sqrt(t))
    t32 = t.float()
    assert torch.equal(safe_sqrt(t32.clone()), torch.sqrt(t32))


# ---- one-pass multiply-adds -----------------------------------------------------------------


# ---- the input layer's zero NTK -------------------------------------------------------------


# ---- the input layer's tile -----------------------------------------------------------------




# ---- reverse mode -------------------------------------------------------------------------------

def _pooled():
    return wn.Serial(wn.Conv(4, 3, W_std=1.3, b_std=0.2), wn.Relu(), wn.AvgPool(2, stride=1, padding="same"),
                     wn.Conv(4, 2), wn.Gelu(), wn.GlobalAvgPool(), wn.Dense(1))


@pytest.mark.parametrize("block_size", [1, 2, 5])
def test_gradients_of_tiled_kernels_equal_those_of_one_call(block_size):
    """Reverse mode through many tiles (concatenated, each input's own covariances replayed
    across tiles) gives the gradients of one tile, in the inputs and a hyperparameter."""
    x = torch.randn(5, 2, 4, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    w = torch.tensor(1.3, dtype=D)

    def grads(size):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        net = wn.Serial(wn.Conv(4, 3, W_std=wr, b_std=0.2), wn.Relu(), wn.AvgPool(2, stride=1, padding="same"),
                        wn.Conv(4, 2), wn.Gelu(), wn.GlobalAvgPool(), wn.Dense(1))
        k = net.kernel(xr, block_size=size)
        return torch.autograd.grad((k.nngp * k.ntk).sum(), (xr, wr))

    for a, b in zip(grads(block_size), grads(5)):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-14 * b.abs().max())


def test_reverse_mode_through_apply_and_in_place_rules_matches_finite_differences():
    x = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(2), requires_grad=True)
    head = wn.Serial(wn.Relu(), wn.Dense(3), wn.Erf(), wn.Dense(1))

    def kernel(a):
        k = head.apply(wn.Dense(3, 1.2, 0.1).kernel(a))
        return k.nngp, k.ntk

    assert torch.autograd.gradcheck(kernel, (x,))


def test_a_kernel_that_needs_no_gradient_reuses_buffers_and_one_that_does_keeps_its_graph():
    x = torch.randn(6, 2, 5, 5, dtype=D, generator=torch.Generator().manual_seed(3))
    plain = _pooled().kernel(x)
    assert not plain.ntk.requires_grad and plain.ntk.grad_fn is None
    traced = _pooled().kernel(x.clone().requires_grad_())
    assert traced.ntk.requires_grad
    # The same arithmetic, but fused multiply-adds are two roundings where autograd records.
    assert torch.allclose(traced.ntk.detach(), plain.ntk, rtol=1e-14, atol=0)
