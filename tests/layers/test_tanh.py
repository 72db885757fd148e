"""Tanh as a scale mixture of erfs (src/widenet/layers/tanh.py): the mixture against tanh, the
kernels against adaptive two-dimensional integration at any variance, the fused rule against
the torch one."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import IntegrationWarning, quad
from scipy.stats import kstwobign

import widenet as wn
from layers.contract import NonlinearityContract
from widenet.layers.tanh import kolmogorov_pdf, mixture

D = torch.float64


class TestTanh(NonlinearityContract):
    layer_type = wn.Tanh
    dual_rtol = 1e-7  # the 9-node mixture: kernels within ~5e-11 of adaptive integration


def test_the_kolmogorov_density_by_both_series():
    # The small-k theta series (used below 1) and the alternating series (above) are two
    # independent formulas of one density: across the switch they agree to rounding.
    k = np.linspace(0.6, 1.4, 81)
    j = np.arange(1, 40)[:, None]
    a = (2 * j - 1) ** 2 * math.pi**2 / 8
    small = (math.sqrt(2 * math.pi) / k**2 * ((2 * a / k**2 - 1) * np.exp(-a / k**2))).sum(0)
    large = (8 * k * ((-1.0) ** (j - 1)) * j**2 * np.exp(-2 * j**2 * k**2)).sum(0)
    np.testing.assert_allclose(small, large, rtol=1e-14)
    np.testing.assert_allclose(kolmogorov_pdf(k), large, rtol=1e-14)
    # scipy's kstwobign is within 3e-8 (its own series is truncated near k = 0.82)
    k = np.linspace(0.05, 4, 400)
    np.testing.assert_allclose(kolmogorov_pdf(k), kstwobign.pdf(k), rtol=1e-7, atol=1e-14)


def test_the_mixture_reproduces_tanh():
    b, w = mixture()
    x = np.concatenate([np.geomspace(1e-6, 3, 2000), np.linspace(3, 40, 200)])
    approx = (w * np.vectorize(math.erf)(np.outer(x, b))).sum(1)
    assert np.abs(approx / np.tanh(x) - 1).max() < 1e-7  # 9 nodes; the kernels, averages of it, do better
    assert w.sum() == pytest.approx(1.0, abs=1e-14)


def _reference(q1, q2, rho, g):
    """E[g(u) g(v)] by nested adaptive quadrature in x-space (scipy's QUADPACK), the inner
    integral conditioned on u: an oracle independent of widenet's rule. (QUADPACK may warn
    that rounding keeps it from its 1e-10 target; the comparisons ask for 1e-7.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IntegrationWarning)
        return _nested(q1, q2, rho, g)


def _nested(q1, q2, rho, g):
    s, sq1, sq2 = math.sqrt(max(1 - rho * rho, 0.0)), math.sqrt(q1), math.sqrt(q2)

    def inner(z1):
        m, sd = sq2 * rho * z1, sq2 * s
        if sd < 1e-12:
            return g(m)
        lo, hi = m - 12 * sd, m + 12 * sd
        return quad(lambda y: g(y) * math.exp(-0.5 * ((y - m) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), lo, hi,
                    points=[0.0] if lo < 0 < hi else None, epsabs=1e-15, epsrel=1e-10, limit=400)[0]

    return quad(lambda x: g(x) * inner(x / sq1) * math.exp(-0.5 * x * x / q1) / (sq1 * math.sqrt(2 * math.pi)),
                -12 * sq1, 12 * sq1, points=[0.0], epsabs=1e-15, epsrel=1e-10, limit=400)[0]


def _sech2(x):
    e = math.exp(-2 * abs(x))
    return 4 * e / (1 + e) ** 2


@pytest.mark.parametrize("q1, q2, rho", [(0.01, 0.02, 0.5), (1.0, 1.0, 0.3), (1.0, 2.0, 0.999), (40.0, 30.0, 0.9),
                                         (40.0, 40.0, 1.0), (1000.0, 500.0, 0.99), (10.0, 0.1, -0.7),
                                         (1e4, 1e4, 0.9999)])
def test_the_kernels_equal_adaptive_integration_at_any_variance(q1, q2, rho):
    t, tdot = wn.Tanh().dual(torch.tensor(q1, dtype=D), torch.tensor(q2, dtype=D),
                             torch.tensor(rho * math.sqrt(q1 * q2), dtype=D))
    assert float(t) == pytest.approx(_reference(q1, q2, rho, math.tanh), rel=1e-8)
    assert float(tdot) == pytest.approx(_reference(q1, q2, rho, _sech2), rel=1e-8)
    if rho == 1.0 and q1 == q2:
        assert float(wn.Tanh().variance(torch.tensor([q1], dtype=D))[0]) == pytest.approx(float(t), rel=1e-14)


def test_gauss_hermite_at_the_default_degree_is_what_the_mixture_fixes():
    # At pre-activation variance 40 the old quadrature rule was off by percents.
    q = torch.tensor(40.0, dtype=D)
    t_gh, _ = wn.Elementwise(torch.tanh).dual(q, q, 0.9 * q)
    t, _ = wn.Tanh().dual(q, q, 0.9 * q)
    exact = _reference(40.0, 40.0, 0.9, math.tanh)
    assert abs(float(t) / exact - 1) < 1e-7 < 1e-3 < abs(float(t_gh) / exact - 1)


def test_the_fused_rule_equals_the_torch_one(monkeypatch):
    from widenet._engine import fused

    from toolchain import fused_or_skip

    fused_or_skip()
    x = torch.randn(37, 6, dtype=D, generator=torch.Generator().manual_seed(2)) * 3
    net = wn.Serial(wn.Dense(64, 1.7, 0.2), wn.Tanh(), wn.Dense(64, 1.7, 0.2), wn.Tanh(), wn.Dense(1))
    fast = net.kernel(x)
    monkeypatch.setattr(fused, "_ENABLED", False)
    slow = net.kernel(x)
    for name in ("nngp", "ntk"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert float(((a - b).abs() / b.abs()).max()) < 1e-13
    # float32: the fused rule (3.5-ulp asin) is as accurate as the torch one against float64
    eager32 = net.kernel(x.float())
    monkeypatch.setattr(fused, "_ENABLED", True)
    fused32 = net.kernel(x.float())
    for name in ("nngp", "ntk"):
        exact = getattr(slow, name)
        errors = [float(((getattr(k, name).double() - exact).abs() / exact.abs()).max()) for k in (fused32, eager32)]
        assert errors[0] < 2 * errors[1] + 1e-6, (name, errors)
