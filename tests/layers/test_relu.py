"""The ReLU family (src/widenet/layers/relu.py): ReLU, leaky ReLU, ABRelu, absolute value."""

import math

import pytest
import torch

import widenet as wn
from layers.contract import SQRT_EPS, NonlinearityContract, covariances, dual
from widenet.errors import ParameterError

D = torch.float64


class TestRelu(NonlinearityContract):
    layer_type = wn.Relu
    dual_oracle = "monte_carlo"


class TestLeakyRelu(NonlinearityContract):
    layer_type = wn.LeakyRelu
    params = {"alpha": 0.2}
    float_params = ("alpha",)
    bad = ((lambda: wn.LeakyRelu(math.nan), ParameterError, r"LeakyRelu: alpha must be a finite float \(got nan\)"),)
    dual_oracle = "monte_carlo"


class TestABRelu(NonlinearityContract):
    layer_type = wn.ABRelu
    params = {"a": -0.4, "b": 1.3}
    float_params = ("a", "b")
    bad = ((lambda: wn.ABRelu(0.0, math.inf), ParameterError, r"ABRelu: b must be a finite float \(got inf\)"),
           (lambda: wn.ABRelu("0"), ParameterError, r"ABRelu: a must be a finite float \(got '0'\)"))
    dual_oracle = "monte_carlo"


class TestAbs(NonlinearityContract):
    layer_type = wn.Abs
    dual_oracle = "monte_carlo"


def test_relu_closed_form_is_cho_saul():
    q1, q2, K = covariances()
    T, Tdot, _ = dual(wn.Relu(), q1, q2, K)
    prod = q1 * q2
    theta = torch.arccos(torch.where(prod > 0, K / torch.sqrt(torch.where(prod > 0, prod, 1)), 0).clamp(-1, 1))
    expected = torch.sqrt(prod) / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta))
    inner = torch.arange(len(K)) >= 4  # rho = +-1 (+-1e-9) only to sqrt(eps), see SQRT_EPS
    assert torch.allclose(T[inner], expected[inner], atol=1e-12)
    assert torch.allclose(T, expected, atol=SQRT_EPS)
    nonzero = (prod > 0) & inner
    assert torch.allclose(Tdot[nonzero], ((math.pi - theta) / (2 * math.pi))[nonzero], atol=1e-12)
    nonzero = prod > 0
    assert torch.allclose(Tdot[nonzero], ((math.pi - theta) / (2 * math.pi))[nonzero], atol=SQRT_EPS)
    # With a zero-variance input the angle is taken as pi/2 (Neural Tangents' convention).
    assert torch.all(Tdot[~nonzero] == 0.25)


def test_dual_evaluates_the_rule_on_any_broadcast_tensors():
    t, tdot = wn.Relu().dual(torch.tensor([1.0, 4.0], dtype=torch.float64), 1.0, 0.0)
    # Orthogonal inputs: T = sqrt(q1 q2) / (2 pi), Tdot = 1/4.
    assert torch.allclose(t, torch.tensor([1.0, 2.0], dtype=torch.float64) / (2 * math.pi), rtol=1e-15)
    assert torch.equal(tdot, torch.full((2,), 0.25, dtype=torch.float64))
    assert torch.equal(wn.Relu().variance(torch.tensor([2.0, 3.0], dtype=torch.float64)),
                       torch.tensor([1.0, 1.5], dtype=torch.float64))


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
