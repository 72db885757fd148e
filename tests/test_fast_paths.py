"""The engine's faster eager paths against the plain expressions they replace.

Each path is checked against an independent computation: correctly rounded square roots
(``math.sqrt``), extended-precision multiply-adds (numpy's longdouble), ``torch.einsum``, and
the exact identities that hold for an input against itself.
"""

import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import widenet as wn
from widenet._engine import exact as _exact, scratch as _scratch
from widenet._engine import Tile as Work
from widenet._engine import driver as _driver, inputs as _inputs
from widenet._engine import safe_sqrt

D = torch.float64


def _ulps(a: torch.Tensor, exact: np.ndarray) -> np.ndarray:
    return np.abs(a.numpy() - exact) / np.spacing(np.abs(exact))


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


# ---- the input layer's zero NTK -------------------------------------------------------------

def _work(n=3):
    nngp = torch.rand(n, n, dtype=D)
    return Work(nngp, None, torch.rand(n, dtype=D), torch.rand(n, dtype=D))


@pytest.mark.parametrize("touch", ["in_place", "view_write", "out_write", "replaced", "copied"])
def test_a_zero_ntk_is_known_zero_only_until_something_touches_it(touch):
    w = _work()
    w.start_ntk()
    assert w.ntk_is_zero and not w.ntk.any()
    if touch == "in_place":
        w.ntk.add_(1.0)
    elif touch == "view_write":
        w.ntk[1:].fill_(2.0)
    elif touch == "out_write":
        torch.mul(w.nngp, 2.0, out=w.ntk)
    elif touch == "replaced":
        w.ntk = torch.zeros_like(w.nngp)  # zero, but not the tensor start_ntk made
    else:
        w = w.copy()
    assert not w.ntk_is_zero


_SELF_NETS = {
    "dense": (lambda: wn.Serial(wn.Dense(8, 1.3 - 1e-5, 0.2), wn.Relu()), (6, 5)),
    "conv": (lambda: wn.Serial(wn.Conv(8, 3, W_std=1.3 - 1e-5, b_std=0.2), wn.Relu(), wn.GlobalAvgPool()), (5, 2, 7)),
    "conv-standard": (lambda: wn.Serial(wn.Conv(8, 3, W_std=1.1, b_std=0.3, parameterization="standard"),
                                        wn.Relu(), wn.Flatten()), (5, 2, 7)),
}


@pytest.mark.parametrize("name", list(_SELF_NETS))
def test_an_input_against_itself_has_an_angle_of_exactly_zero_after_a_relu(name):
    """After affine + ReLU, an input against itself has theta = 0, so Tdot = 1/2 exactly and
    the NTK entry is exactly half the affine layer's NTK entry. An angle rounded to ~1e-8
    (a tile and a covariance rounded differently) breaks the equality by ~1e-9."""
    build, shape = _SELF_NETS[name]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4), dtype=D)
    net = build()
    k, pre = net.kernel(x), wn.Serial(*net.layers[:1]).kernel(x)
    if name == "dense":
        assert torch.equal(k.ntk.diagonal(), pre.ntk.diagonal() / 2)
    else:
        # Same position pairs (s, s) of each input against itself: the full layout's entries.
        full = wn.Serial(*net.layers[:2]).kernel(x, layout="full")
        before = pre.ntk if pre.layout == "full" else wn.Serial(*net.layers[:1]).kernel(x, layout="full").ntk
        idx = torch.arange(x.shape[0])
        pos = torch.arange(x.shape[2])
        assert torch.equal(full.ntk[idx, idx][:, pos, pos], before[idx, idx][:, pos, pos] / 2)


# ---- the input layer's tile -----------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 4, 5])
def test_full_layout_input_tiles_equal_the_channel_sums(channels):
    x = torch.randn(9, channels, 3, 4, generator=torch.Generator().manual_seed(channels), dtype=D)
    w = _inputs.input_tile(x[:4], x[4:], same=False, full=True, tile=True, diagonal=None)
    expected = torch.einsum("icpq,jcrs->ijpqrs", x[:4], x[4:]) / channels
    torch.testing.assert_close(w.nngp, expected, rtol=1e-15, atol=1e-15)
    if channels == 1:  # one product per entry: exact
        assert torch.equal(w.nngp, expected)


def test_broadcast_shape_is_torchs():
    assert _scratch.broadcast_shape((3, 1, 5), (1, 4, 1)) == torch.broadcast_shapes((3, 1, 5), (1, 4, 1))
    with pytest.raises(RuntimeError):
        _scratch.broadcast_shape((3,), (4,))
