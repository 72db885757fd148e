"""widenet.theory, signal propagation: ReLU's closed forms, tanh and erf critical lines against an
independent computation (adaptive quadrature and Brent's method), and deep finite networks whose
correlations converge at the predicted depth scale (Poole et al. 2016; Schoenholz et al. 2017)."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import brentq

import widenet as wn
from widenet import theory
from widenet.errors import ParameterError

D = torch.float64


def test_relu_fixed_point_and_critical_point_in_closed_form():
    w = torch.tensor([0.5, 1.0, 1.5, 1.9, 1.99], dtype=D)
    b = torch.tensor([0.05, 0.2, 1.0], dtype=D)[:, None]
    sp = theory.signal_propagation(wn.Relu(), w, b)
    torch.testing.assert_close(sp.q_star, b / (1 - w / 2) + 0 * w, rtol=1e-12, atol=0)
    assert float(theory.fixed_point_q(wn.Relu(), 1.9, 0.2)) == pytest.approx(4.0, rel=1e-12)  # Poole et al.
    torch.testing.assert_close(sp.chi1, (w / 2).expand_as(sp.chi1), rtol=1e-12, atol=0)
    assert bool((sp.c_star == 1).all()) and set(sp.phase.ravel()) == {"ordered"}
    # Past sigma_w^2 = 2 the variance grows without bound; at (2, 0) every q is a fixed point.
    assert math.isinf(float(theory.fixed_point_q(wn.Relu(), 2.5, 0.1)))
    assert float(theory.critical_line(wn.Relu(), 0.0)) == pytest.approx(2.0, abs=1e-12)
    at = theory.signal_propagation(wn.Relu(), 2.0, 0.0)
    assert float(at.chi1) == 1.0 and at.phase.item() == "critical"


def _reference(phi, dphi, bias_var):
    """sigma_w^2 with chi1 = 1 by Brent's method over adaptive 1-D quadrature (scipy only)."""
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    expect = lambda f: quad(lambda z: pdf(z) * f(z), -np.inf, np.inf, epsabs=1e-15, epsrel=1e-13, limit=400)[0]  # noqa: E731

    def q_star(w):
        if bias_var == 0:
            return 0.0
        return brentq(lambda q: w * expect(lambda z: phi(math.sqrt(q) * z) ** 2) + bias_var - q, 1e-12, 1e3,
                      xtol=1e-15, rtol=1e-14)

    def chi1(w):
        q = q_star(w)
        return w * expect(lambda z: dphi(math.sqrt(q) * z) ** 2)

    return brentq(lambda w: chi1(w) - 1, 0.1, 10, xtol=1e-14, rtol=1e-13)


@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_tanh_and_erf_critical_lines_match_an_independent_computation(name):
    bias = [0.0, 0.01, 0.05, 0.1, 0.3]
    if name == "tanh":
        # The layer's quadrature sets the accuracy: 1e-7 at its default 96 nodes, 1e-10 at 200.
        layer, phi, dphi = wn.Tanh(), math.tanh, lambda x: 1 - math.tanh(x) ** 2
    else:
        layer, phi, dphi = wn.Erf(), math.erf, lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x)
    ours = theory.critical_line(layer, bias).numpy()
    expected = np.array([_reference(phi, dphi, b) for b in bias])
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    if name == "tanh":
        np.testing.assert_allclose(theory.critical_line(wn.Tanh(), bias).numpy(), expected, rtol=1e-6)
    # Known anchors: chi1 = sigma_w^2 phi'(0)^2 without bias: 1 for tanh, pi/4 for erf.
    assert ours[0] == pytest.approx(1.0 if name == "tanh" else math.pi / 4, rel=1e-9)


def test_correlation_map_slopes_and_fixed_points_are_consistent():
    """c = 1 is always fixed at q*; the slope of the correlation map (finite differences) is
    weight_var E[phi'(u1) phi'(u2)] (chi1 at c = 1, chi_c at c*); c* is a fixed point."""
    for w, b in ((1.2, 0.05), (2.5, 0.05), (3.5, 0.2)):
        sp = theory.signal_propagation(wn.Tanh(), w, b)
        q, c = sp.q_star, sp.c_star
        assert float(theory.correlation_map(wn.Tanh(), w, b, 1.0)) == pytest.approx(1.0, abs=1e-9)
        assert float(theory.correlation_map(wn.Tanh(), w, b, c)) == pytest.approx(float(c), abs=1e-9)
        h = 1e-5
        at = float(c) if float(c) < 1 else 1 - h
        slope = (theory.correlation_map(wn.Tanh(), w, b, at + h if at + h <= 1 else 1.0, q)
                 - theory.correlation_map(wn.Tanh(), w, b, at - h, q)) / (min(at + h, 1.0) - (at - h))
        expected = sp.chi_c if float(c) < 1 else sp.chi1
        assert float(slope) == pytest.approx(float(expected), rel=1e-3)
        assert (float(c) < 1) == (float(sp.chi1) > 1)


@pytest.mark.parametrize("weight_var, bias_var, start, depth", [(1.0, 0.05, 0.8, 14), (1.3, 0.1, 0.8, 14),
                                                                  (2.5, 0.05, None, 24)])
def test_deep_finite_tanh_networks_converge_at_the_predicted_depth_scale(weight_var, bias_var, start, depth):
    """Monte Carlo: two inputs at the fixed-point variance through deep width-1000 tanh networks
    (8 of them); |c_l - c*| decays as exp(-l / xi_c), in the ordered (c* = 1) and the chaotic
    (c* < 1) phase."""
    sp = theory.signal_propagation(wn.Tanh(), weight_var, bias_var)
    q, c_star, xi = float(sp.q_star), float(sp.c_star), float(sp.xi_c)
    c0 = c_star + 0.2 if start is None else start
    nets, width = 8, 1000
    g = torch.Generator().manual_seed(1)
    z = torch.randn(nets, width, 2, generator=g, dtype=D)
    h = torch.stack([z[..., 0], c0 * z[..., 0] + math.sqrt(1 - c0**2) * z[..., 1]], -1) * math.sqrt(q)
    deviation = []
    for _ in range(depth):
        c = (h[..., 0] * h[..., 1]).sum(1) / ((h[..., 0] ** 2).sum(1) * (h[..., 1] ** 2).sum(1)).sqrt()
        deviation.append(abs(float(c.mean()) - c_star))
        weights = torch.randn(nets, width, width, generator=g, dtype=D) * math.sqrt(weight_var / width)
        h = weights @ torch.tanh(h) + torch.randn(nets, width, 1, generator=g, dtype=D) * math.sqrt(bias_var)
    layers = np.arange(depth)[2:]
    slope = np.polyfit(layers, np.log(deviation[2:]), 1)[0]
    tolerance = 0.1 if c_star == 1 else 0.2
    assert -1 / slope == pytest.approx(xi, rel=tolerance)


def test_phase_diagram_arrays_and_figure():
    import matplotlib

    matplotlib.use("Agg")
    # (sigma_w^2 = 1 at sigma_b^2 = 0 is tanh's critical point itself, chi1 = 1 up to rounding:
    # the grid steps around it)
    pd = theory.phase_diagram(wn.Tanh(), np.linspace(0.55, 4, 8), np.linspace(0, 0.3, 5))
    assert pd.result.chi1.shape == (5, 8) and pd.critical_weight_var.shape == (5,)
    chi = pd.result.chi1.numpy()
    for row, critical in zip(chi, pd.critical_weight_var):
        # ordered left of the critical line, chaotic right of it
        assert ((chi_row := row[pd.weight_vars < critical]) < 1).all() and (row[pd.weight_vars > critical] > 1).all()
        assert chi_row.size > 0
    fig = pd.plot()
    assert fig.axes and fig.axes[0].get_xlabel() == r"$\sigma_w^2$"


def test_bad_arguments():
    with pytest.raises(ParameterError, match="widenet nonlinearity"):
        theory.signal_propagation(wn.Dense(3), 1.0, 0.1)
    with pytest.raises(ParameterError, match="weight_var must be > 0"):
        theory.fixed_point_q(wn.Relu(), 0.0, 0.1)
    with pytest.raises(ParameterError, match="bias_var must hold finite variances"):
        theory.fixed_point_q(wn.Relu(), 1.0, float("nan"))


def test_depth_profile_of_deep_tanh_networks_follows_the_mean_field_depth_scale():
    """The NNGP correlations of a depth-L widenet architecture converge at the rate xi_c of
    signal_propagation; in the ordered phase the NTK's condition number blows up with depth
    (untrainable), in the chaotic one it stays of order one (Xiao et al. 2020)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 8, generator=g, dtype=D)

    def profile(weight_var, bias_var):
        dense = wn.Dense(1, math.sqrt(weight_var), math.sqrt(bias_var))
        return theory.depth_profile(wn.Serial(wn.Tanh(), dense), x, 39, stem=dense)

    ordered = profile(1.0, 0.05)
    assert ordered.depth_scale == pytest.approx(float(theory.signal_propagation(wn.Tanh(), 1.0, 0.05).xi_c), rel=0.02)
    assert ordered.ntk_condition[39] > 1e3 * ordered.ntk_condition[5] and ordered.mean_correlation[39] > 0.999
    chaotic = profile(2.5, 0.05)
    assert chaotic.depth_scale == pytest.approx(float(theory.signal_propagation(wn.Tanh(), 2.5, 0.05).xi_c), rel=0.2)
    assert chaotic.ntk_condition[39] < 10
    # The carried kernels are those of the whole network built at that depth (to the rounding
    # of quadrature sums taken over other tile shapes).
    dense = wn.Dense(1, 1.0, math.sqrt(0.05))
    direct = wn.Serial(dense, *[layer for _ in range(7) for layer in (wn.Tanh(), dense)]).kernel(x).nngp
    s = direct.diagonal().sqrt()
    assert float((direct / (s[:, None] * s)).fill_diagonal_(0).sum() / (12 * 11)) == pytest.approx(
        ordered.mean_correlation[7], rel=1e-8)
    with pytest.raises(ParameterError, match="depth"):
        theory.depth_profile(wn.Tanh(), x, 0)
