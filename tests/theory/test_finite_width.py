"""Finite-width statistics, NNGP side (src/widenet/theory/_finite_width.py, work in progress
toward theory.finite_width): the four-point vertex and the 1/n correction of the two-point
function against Monte Carlo of real finite networks, extrapolated in 1/n."""

import math

import pytest
import torch

import widenet as wn
from widenet.theory._finite_width import finite_width_nngp

D = torch.float64
X = torch.tensor([[1.0, 0.2, -0.5], [0.3, -1.1, 0.4], [-0.7, 0.5, 0.9]], dtype=D)
SCALES = [(1.2, 0.3), (1.3, 0.2), (1.1, 0.1)]  # (W_std, b_std) of the three Dense layers


def _last_metric(act, n, networks, seed):
    """The output's covariance given the last hidden layer, ``C_b + C_W/n sum_j s_j(x_a) s_j(x_b)``,
    for ``networks`` independent finite networks: the output is exactly Gaussian given it, so
    E[f_a f_b] = E[G_ab] and the connected four-point function is built from Cov(G) (the
    conditional-Gaussian trick: no noise from the last layer's weights)."""
    g = torch.Generator().manual_seed(seed)
    (w0, b0), (w1, b1), (w2, b2) = SCALES
    d = X.shape[1]
    z = torch.einsum("snd,ad->sna", torch.randn(networks, n, d, generator=g, dtype=D), X) * (w0 / math.sqrt(d))
    z = z + b0 * torch.randn(networks, n, 1, generator=g, dtype=D)
    z = (torch.randn(networks, n, n, generator=g, dtype=D) * (w1 / math.sqrt(n))) @ act(z)
    z = z + b1 * torch.randn(networks, n, 1, generator=g, dtype=D)
    s = act(z)
    return b2**2 + w2**2 / n * torch.einsum("sna,snb->sab", s, s)


def _measured_vertex(act, n, batches=20, per_batch=2000):
    """n Cov(G) per batch of networks, (batches, 3, 3, 3, 3)."""
    vs = []
    for b in range(batches):
        G = _last_metric(act, n, per_batch, seed=1000 * n + b)
        vs.append(n * torch.cov(G.reshape(per_batch, -1).T).reshape(3, 3, 3, 3))
    return torch.stack(vs)


def _second_moment(phi, n, networks, seed):
    """E[f_a f_b] of the depth-3 network, per network, Rao-Blackwellized: given the first hidden
    layer's metric G2 the second hidden layer's preactivations are exactly N(0, G2), so the
    output's second moment given G2 is C_b + C_W <s s>_{G2}, by the layer's own kernel rule
    (which removes the second hidden layer's and the readout's sampling noise)."""
    g = torch.Generator().manual_seed(seed)
    (w0, b0), (w1, b1), (w2, b2) = SCALES
    chol = torch.linalg.cholesky(w0**2 * X @ X.T / X.shape[1] + b0**2)
    s = phi.fn(torch.randn(networks, n, 3, generator=g, dtype=D) @ chol.T)
    G2 = b1**2 + w1**2 / n * torch.einsum("sna,snb->sab", s, s)
    q = G2.diagonal(dim1=1, dim2=2)
    t, _ = phi.dual(q[:, :, None].expand_as(G2), q[:, None, :].expand_as(G2), G2)
    return b2**2 + w2**2 * t


@pytest.mark.parametrize("phi", [wn.Tanh(), wn.Erf(), wn.Gelu()], ids=repr)
def test_vertex_and_correction_match_monte_carlo_extrapolated_in_one_over_n(phi):
    layers = [wn.Dense(1, *SCALES[0]), phi, wn.Dense(1, *SCALES[1]), phi, wn.Dense(1, *SCALES[2])]
    fw = finite_width_nngp(layers, X)
    v1, v2 = _measured_vertex(phi.fn, 24), _measured_vertex(phi.fn, 48)
    # n Q(n) = Q_inf + c / n: two widths give Q_inf = 2 Q(n2) - Q(n1); batches give errors.
    v_inf = 2 * v2.mean(0) - v1.mean(0)
    v_se = (4 * v2.var(0) / len(v2) + v1.var(0) / len(v1)).sqrt()
    k = {n: torch.stack([n * (_second_moment(phi, n, 20000, 100 * n + b).mean(0) - fw.nngp) for b in range(10)])
         for n in (32, 64)}
    k1_inf = 2 * k[64].mean(0) - k[32].mean(0)
    k1_se = (4 * k[64].var(0) / 10 + k[32].var(0) / 10).sqrt()

    def worst(pred, measured, se):
        return float(((measured - pred).abs() / se).max())

    assert worst(fw.vertex, v_inf, v_se) < 4.5
    assert worst(fw.nngp_correction, k1_inf, k1_se) < 4.5
    # the same tests refuse a wrong prediction: twice the truth, or none at all
    assert worst(2 * fw.vertex, v_inf, v_se) > 6 and worst(0 * fw.vertex, v_inf, v_se) > 6
    assert worst(2 * fw.nngp_correction, k1_inf, k1_se) > 6 and worst(0 * fw.nngp_correction, k1_inf, k1_se) > 6
    # the connected four-point function is the vertex summed over the three pairings
    assert torch.allclose(fw.four_point[0, 1, 2, 0], fw.vertex[0, 1, 2, 0] + fw.vertex[0, 2, 1, 0] + fw.vertex[0, 0, 1, 2])


def test_one_hidden_layer_has_no_two_point_correction():
    fw = finite_width_nngp([wn.Dense(1, 1.2, 0.3), wn.Tanh(), wn.Dense(1, 1.1, 0.1)], X)
    assert torch.equal(fw.nngp_correction, torch.zeros(3, 3, dtype=D))
    assert torch.allclose(fw.nngp, wn.Serial(wn.Dense(1, 1.2, 0.3), wn.Tanh(), wn.Dense(1, 1.1, 0.1)).nngp(X), rtol=1e-12)


def test_deep_linear_networks_have_their_closed_form():
    # phi(z) = z, C_b = 0 (PDLT ch. 3): V^(l)_(ab)(cd) = (l - 1)(K_ac K_bd + K_ad K_bc) at the
    # l-th layer and no two-point correction, whatever the depth.
    for depth in (2, 3, 5):
        layers = [wn.Dense(1, 1.3, None)]
        for _ in range(depth - 1):
            layers += [wn.Monomial(1), wn.Dense(1, 0.9, None)]
        fw = finite_width_nngp(layers, X)
        K = fw.nngp
        expected = (depth - 1) * (torch.einsum("ac,bd->abcd", K, K) + torch.einsum("ad,bc->abcd", K, K))
        torch.testing.assert_close(fw.vertex, expected, rtol=1e-10, atol=1e-12)
        assert float(fw.nngp_correction.abs().max()) < 1e-12


def test_unsupported_architectures_and_inputs_are_refused_naming_the_layer():
    from widenet.errors import NonFiniteInputError, ParameterError

    with pytest.raises(ParameterError, match=r"Relu\(\) at position 1 is kinked"):
        finite_width_nngp(wn.Serial(wn.Dense(1), wn.Relu(), wn.Dense(1)), X)
    with pytest.raises(ParameterError, match=r"LayerNorm\(.*\) at position 2 is not supported here: the network must "
                                             r"be Dense, then \(elementwise nonlinearity, Dense\) pairs"):
        finite_width_nngp(wn.Serial(wn.Dense(1), wn.Tanh(), wn.LayerNorm(), wn.Dense(1)), X)
    with pytest.raises(ParameterError, match=r"Tanh\(\) at position 2 is not supported here"):
        finite_width_nngp(wn.Serial(wn.Dense(1), wn.Tanh(), wn.Tanh(), wn.Dense(1)), X)
    with pytest.raises(NonFiniteInputError, match="x must be finite"):
        finite_width_nngp(wn.Serial(wn.Dense(1), wn.Tanh(), wn.Dense(1)), X * float("nan"))
    nested = wn.Serial(wn.Serial(wn.Dense(1, 1.2, 0.3), wn.Tanh()), wn.Dense(1, 1.1, 0.1))
    assert torch.equal(finite_width_nngp(nested, X).vertex,
                       finite_width_nngp([wn.Dense(1, 1.2, 0.3), wn.Tanh(), wn.Dense(1, 1.1, 0.1)], X).vertex)
    with pytest.raises(ParameterError, match=r"n must be an integer >= 1 \(got 0\)"):
        finite_width_nngp(nested, X).nngp_at(0)
