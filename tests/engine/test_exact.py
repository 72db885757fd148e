"""Reproducible arithmetic and the fused multiply-add (src/widenet/_engine/exact.py).

Reproducible mode (``reproducible=True``): every kernel entry has the same bits whatever
tile, block size, batch or thread count computes it, so kernels computed in pieces equal the
one-call kernel exactly; and the exact products, vector-path ops and fixed-order sums behind
it are right and order-independent on their own."""

import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import widenet as wn
from oracles import ulps as _ulps
from widenet import blocked
from widenet._engine import exact as _exact
from widenet.errors import ParameterError

D = torch.float64


# ---- exact products ----------------------------------------------------------------------

def _fsum_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with every dot product summed exactly (math.fsum of the products, which are
    themselves exact in float64 for float32 operands and rounded once for float64 ones)."""
    a64, b64 = a.double(), b.double()
    return torch.tensor([[math.fsum((a64[i] * b64[:, j]).tolist()) for j in range(b.shape[1])]
                         for i in range(a.shape[0])], dtype=D)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 3, 64, 785])
def test_exact_products_depend_only_on_the_operands_values(dtype, k):
    g = torch.Generator().manual_seed(k)
    a = torch.randn(13, k, generator=g, dtype=D).to(dtype)
    b = torch.randn(k, 9, generator=g, dtype=D).to(dtype)
    perm = torch.randperm(k, generator=g)
    with _exact.enabled():
        p = _exact.matmul(a, b)
        rows = torch.cat([_exact.matmul(a[i:i + 1], b) for i in range(13)])
        cols = torch.cat([_exact.matmul(a, b[:, j:j + 1]) for j in range(9)], 1)
        permuted = _exact.matmul(a[:, perm], b[perm])
        transposed = _exact.matmul(b.T, a.T).T
        batched = _exact.matmul(torch.stack([a[:7], a[6:]]), b)
    assert p.dtype == dtype and p.shape == (13, 9) and batched.shape == (2, 7, 9)
    assert torch.equal(p, rows) and torch.equal(p, cols)
    # Longer contractions are exact before their one rounding: any order of the axis agrees.
    assert torch.equal(p, permuted) or k <= _exact._SHORT
    assert torch.equal(p, transposed)
    assert torch.equal(batched[0], p[:7]) and torch.equal(batched[1], p[6:])
    # Accuracy: within a unit of the last place of |a| |b| of the exact dot products, as BLAS.
    exact = _fsum_product(a, b)
    scale = a.double().abs() @ b.double().abs()
    err = ((p.double() - exact).abs() / scale).max().item()
    assert err <= torch.finfo(dtype).eps, err


def test_exact_products_scale_exactly_and_handle_zeros_and_extremes():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 40, generator=g, dtype=D)
    b = torch.randn(40, 6, generator=g, dtype=D)
    with _exact.enabled():
        p = _exact.matmul(a, b)
        # Scaling a row by a power of two scales its results exactly, even far from 1.
        for e in (-1000, -300, 300, 900):
            assert torch.equal(_exact.matmul(a * 2.0**e, b), p * 2.0**e)
        z = a.clone()
        z[2] = 0
        pz = _exact.matmul(z, b)
        assert torch.equal(pz[2], torch.zeros(6, dtype=D)) and torch.equal(pz[[0, 1, 3, 4]], p[[0, 1, 3, 4]])
        assert torch.equal(_exact.matmul(torch.zeros(3, 40, dtype=D), b), torch.zeros(3, 6, dtype=D))
        # Integer-valued operands (digits' pixels): the product is exact.
        ia = torch.randint(0, 17, (5, 64), generator=g).to(D)
        ib = torch.randint(0, 17, (64, 4), generator=g).to(D)
        assert torch.equal(_exact.matmul(ia, ib), ia @ ib)
        with pytest.raises(ValueError, match="at least 2 axes"):
            _exact.matmul(a[0], b)
        with pytest.raises(TypeError, match="float32 or float64"):
            _exact.matmul(a, b.float())


def test_exact_products_are_plain_products_outside_the_mode():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 7, generator=g, dtype=D), torch.randn(7, 3, generator=g, dtype=D)
    assert not _exact.active()
    assert torch.equal(_exact.matmul(a, b), a @ b)
    with _exact.enabled():
        assert _exact.active()
        with _exact.enabled(False):  # False leaves the mode as it is
            assert _exact.active()
    assert not _exact.active()


# ---- vector-path elementwise ops and fixed-order sums ------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_elementwise_ops_give_each_element_the_same_bits_wherever_it_falls(dtype):
    g = torch.Generator().manual_seed(2)
    y = torch.rand(5000, generator=g, dtype=dtype)
    x = torch.rand(5000, generator=g, dtype=dtype) * 2 - 1
    with _exact.enabled():
        whole = _exact.elementwise(torch.atan2, y, x)
        # Slices of every length and offset, single elements included: torch's scalar tail
        # would compute some of these elements with the C library's atan2 instead.
        for i, j in [(0, 1), (3, 4), (5, 12), (17, 50), (1, 4999), (4000, 5000), (123, 4567)]:
            assert torch.equal(_exact.elementwise(torch.atan2, y[i:j], x[i:j]), whole[i:j])
        # Broadcast and multi-axis operands keep their layout.
        grid = _exact.elementwise(torch.atan2, y[:30, None], x[None, :20])
        assert grid.shape == (30, 20)
        assert torch.equal(grid, _exact.elementwise(torch.atan2, y[:30, None].expand(30, 20).reshape(-1),
                                                    x[None, :20].expand(30, 20).reshape(-1)).view(30, 20))
        t = x[:77].clone()
        assert _exact.apply_(torch.exp, t) is t and torch.equal(t, _exact.elementwise(torch.exp, x[:77]))
    torch.testing.assert_close(whole, torch.atan2(y, x), rtol=4 * torch.finfo(dtype).eps, atol=0)


def test_sums_add_each_output_in_the_same_order_whatever_the_others():
    g = torch.Generator().manual_seed(3)
    # Rows long enough that torch splits a single-output sum across threads.
    t = torch.randn(5, 3, 40000, generator=g, dtype=D)
    with _exact.enabled():
        all_rows = _exact.sum(t, (1, 2))
        for i in range(5):
            assert torch.equal(_exact.sum(t[i:i + 1], (1, 2)), all_rows[i:i + 1])
            assert torch.equal(_exact.sum(t[i], (0, 1)), all_rows[i])
        # Strided inputs reduce like contiguous ones with the same elements in the same order.
        wide = torch.randn(5, 3, 40000, 2, generator=g, dtype=D)
        assert not wide[..., 0].is_contiguous()
        assert torch.equal(_exact.sum(wide[..., 0], (1, 2)), _exact.sum(wide[..., 0].contiguous(), (1, 2)))
        assert torch.equal(_exact.sum(wide[:1, ..., 0], (1, 2)), _exact.sum(wide[..., 0], (1, 2))[:1])
        m = _exact.mean(t, (1, 2), keepdim=True)
        assert m.shape == (5, 1, 1)
        assert torch.equal(_exact.mean(t[2:3], (1, 2), keepdim=True), m[2:3])
        # A pair sum gives (x, x') and (x', x) (positions exchanged) the same value.
        k = torch.randn(4, 6, 6, 6, 6, generator=g, dtype=D)
        assert torch.equal(_exact.pair_sum(k, 2), _exact.pair_sum(k.permute(0, 3, 4, 1, 2), 2))
    torch.testing.assert_close(all_rows, t.sum((1, 2)), rtol=1e-13, atol=1e-10)


# ---- whole kernels ---------------------------------------------------------------------------

def _cases():
    g = torch.Generator().manual_seed(4)
    mask = torch.zeros(9, 10, dtype=torch.bool)
    mask[2, 7:] = True
    mask[5, 4:] = True
    return {
        "fc": (wn.Serial(wn.Dense(64, W_std=1.4, b_std=0.1), wn.Relu(), wn.Dense(8, W_std=1.2, b_std=0.2),
                         wn.Erf(), wn.Dense(8), wn.Gelu(), wn.Dense(8), wn.Rbf(), wn.Dense(8), wn.Sin(),
                         wn.Dense(1)),
               torch.randn(11, 37, generator=g, dtype=D) / 2, None),
        "fc-tanh-float32": (wn.Serial(wn.Dense(32), wn.Tanh(), wn.Dense(16), wn.RectifiedMonomial(2), wn.Dense(1)),
                            torch.randn(10, 300, generator=g), None),
        "cnn-pool": (wn.Serial(wn.Conv(8, 3, padding="same"), wn.Relu(), wn.AvgPool(2), wn.Conv(8, 3),
                               wn.LeakyRelu(0.1), wn.GlobalAvgPool(), wn.Dense(1)),
                     torch.randn(9, 2, 6, 6, generator=g, dtype=D), None),
        "resnet-layernorm": (wn.Serial(wn.Conv(8, 3, padding="same"), wn.FanOut(2),
                                       wn.Parallel(wn.Serial(wn.Relu(), wn.Conv(8, 3, padding="same")), wn.Identity()),
                                       wn.FanInSum(), wn.LayerNorm(axis=(1, 2, 3)), wn.Abs(), wn.Conv(4, 3, stride=2),
                                       wn.SigmoidLike(), wn.GlobalSumPool(), wn.Dense(1)),
                             torch.randn(8, 2, 6, 6, generator=g, dtype=D), None),
        "flatten-fanin": (wn.Serial(wn.Conv(8, 3, padding="circular"), wn.FanOut(2), wn.Parallel(wn.Gelu(), wn.Erf()),
                                    wn.FanInProd(), wn.Dropout(0.2), wn.SumPool(2, padding="same"), wn.Flatten(),
                                    wn.Dense(1)),
                          torch.randn(8, 3, 5, 5, generator=g, dtype=D), None),
        "attention-masked": (wn.Serial(wn.Conv(8, 1), wn.SelfAttention(8, heads=2, pos_emb="sum"), wn.LayerNorm(),
                                       wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)),
                             torch.randn(9, 3, 10, generator=g, dtype=D), mask),
        "attention-identity": (wn.Serial(wn.Conv(8, 1), wn.SelfAttention(8, mechanism="identity", scaling="sqrt"),
                                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)),
                               torch.randn(8, 3, 12, generator=g, dtype=D), None),
    }


CASES = _cases()


def _equal(a: wn.Kernel, b: wn.Kernel, rows=slice(None), cols=slice(None)):
    for name in ("nngp", "ntk"):
        u, v = getattr(a, name), getattr(b, name)[rows, cols]
        assert torch.equal(u, v), f"{name}: max difference {(u - v).abs().max().item()}"


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_in_pieces_equal_the_one_call_kernel_bit_for_bit(name):
    net, x, mask = CASES[name]
    n = x.shape[0]
    whole = net.kernel(x, mask1=mask, reproducible=True)
    # Other block sizes inside one call.
    for block in (1, 3):
        _equal(net.kernel(x, mask1=mask, block_size=block, reproducible=True), whole)
    # Separate calls on blocks of inputs, diagonal blocks as symmetric calls, blocks below the
    # diagonal too (they are the mirror images the symmetric computation does not compute).
    for t in (2, 5):
        for r0 in range(0, n, t):
            for c0 in range(0, n, t):
                rows, cols = slice(r0, r0 + t), slice(c0, c0 + t)
                m1 = None if mask is None else mask[rows]
                m2 = None if mask is None or r0 == c0 else mask[cols]
                part = net.kernel(x[rows], None if r0 == c0 else x[cols], mask1=m1, mask2=m2, reproducible=True)
                _equal(part, whole, rows, cols)
    # Other thread counts.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _equal(net.kernel(x, mask1=mask, reproducible=True), whole)
    finally:
        torch.set_num_threads(threads)
    # And it is the same kernel as without the mode, up to rounding.
    plain = net.kernel(x, mask1=mask)
    eps = torch.finfo(x.dtype).eps
    for name_ in ("nngp", "ntk"):
        u, v = getattr(whole, name_), getattr(plain, name_)
        assert (u - v).abs().max() <= 1e3 * eps * v.abs().max(), name_


def test_reproducible_is_checked_and_refuses_derivatives():
    net = wn.Serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
    x = torch.randn(4, 3, dtype=D)
    with pytest.raises(ParameterError, match="reproducible must be a bool"):
        net.kernel(x, reproducible=1)
    with pytest.raises(ParameterError, match="reproducible must be a bool"):
        blocked.compute(net, x, reproducible="yes")
    w = torch.tensor(1.3, dtype=D)
    tangent_net = wn.Serial(wn.Dense(8, W_std=w), wn.Relu(), wn.Dense(1))

    def f(w_):
        return wn.Serial(wn.Dense(8, W_std=w_), wn.Relu(), wn.Dense(1)).nngp(x, reproducible=True)

    with pytest.raises(ParameterError, match="not differentiable"):
        torch.func.jvp(f, (w,), (torch.ones_like(w),))
    # Inside a reproducible callable too (blocked.compute's mode reaches its kernels).
    with _exact.enabled(), pytest.raises(ParameterError, match="not differentiable"):
        torch.func.jvp(lambda w_: wn.Serial(wn.Dense(8, W_std=w_), wn.Relu()).nngp(x), (w,), (torch.ones_like(w),))
    # Inputs off the CPU are refused before any work.
    with pytest.raises(ParameterError, match="runs on CPU tensors"):
        net.kernel(x.to("meta"), reproducible=True)
    assert tangent_net.nngp(x, reproducible=True).shape == (4, 4)


def test_scale_add_rounds_once_in_the_default_mode_and_twice_in_reproducible_mode():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(4099, generator=g, dtype=D)  # not a multiple of any vector width
    other = torch.randn(4099, generator=g, dtype=D)
    scale, shift = 1.3**2 / 9, 0.1**2
    long = lambda a: a.numpy().astype(np.longdouble)  # noqa: E731
    for add, exact in ((shift, long(t) * np.longdouble(scale) + np.longdouble(shift)),
                       (other, long(t) * np.longdouble(scale) + long(other))):
        fused = _exact.scale_add_(t.clone(), scale, add)
        assert _ulps(fused, exact.astype(np.float64)).max() <= 1.0
        with _exact.enabled():
            assert torch.equal(_exact.scale_add_(t.clone(), scale, add), t * scale + add)


def test_scale_add_with_tensor_hyperparameters_carries_their_tangents():
    t = torch.randn(300, generator=torch.Generator().manual_seed(3), dtype=D)
    with fwAD.dual_level():
        scale = fwAD.make_dual(torch.tensor(0.7, dtype=D), torch.tensor(1.0, dtype=D))
        out = _exact.scale_add_(t.clone(), scale, 0.5)
        primal, tangent = fwAD.unpack_dual(out)
    assert torch.equal(primal, t * 0.7 + 0.5) and torch.equal(tangent, t)


def test_blocked_compute_in_reproducible_mode_equals_the_direct_kernel_for_any_tile(tmp_path):
    net, x, _ = CASES["cnn-pool"]
    x2 = x[:5] * 0.5 + 0.1
    direct = net.kernel(x, reproducible=True)
    rect = net.kernel(x, x2, reproducible=True)
    for tile in (1, 2, 4, 7):
        _equal(blocked.compute(net, x, tile=tile, reproducible=True), direct)
        _equal(blocked.compute(net, x, x2, tile=tile, reproducible=True), rect)
    assert torch.equal(blocked.compute(net, x, tile=4, get="ntk", reproducible=True), direct.ntk)
    # A callable gets the mode too (the kernels it calls run in it).
    fn = lambda a, b: net.kernel(a, b)  # noqa: E731
    _equal(blocked.compute(fn, x, tile=3, reproducible=True), direct)
    # The mode is part of the store's fingerprint: a store of one mode refuses the other.
    store = tmp_path / "k"
    _equal(blocked.compute(net, x, tile=4, store=store, reproducible=True).load(), direct)
    with pytest.raises(blocked.StoreMismatchError, match="reproducible"):
        blocked.compute(net, x, tile=4, store=store)
