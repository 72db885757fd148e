"""theory.finite_width: the 1/n statistics of deep MLPs against Monte Carlo of real finite
networks (extrapolated in 1/n where the prediction is only the leading term), exact special
cases (one hidden layer, deep linear networks) and independent computations of one number."""

import math

import pytest
import torch
from torch import nn

import widenet as wn
import widenet.theory._fw_gauss as fw_gauss
from widenet.errors import (
    NonFiniteInputError,
    OutOfMemoryError,
    ParameterError,
    ShapeError,
)

D = torch.float64
X = torch.tensor([[1.0, 0.2, -0.5], [0.3, -1.1, 0.4], [-0.7, 0.5, 0.9]], dtype=D)
SCALES = [(1.2, 0.3), (1.3, 0.2), (1.1, 0.1)]  # (W_std, b_std) of the three Dense layers


def _net(phi, scales=SCALES):
    layers = [wn.Dense(1, *scales[0])]
    for s in scales[1:]:
        layers += [phi, wn.Dense(1, *s)]
    return wn.Serial(*layers)


def _pairings(V):
    """``V_abcd + V_acbd + V_adbc`` of a tensor of pair covariances ``V_(ab)(cd)``."""
    return V + V.permute(0, 2, 1, 3) + V.permute(0, 2, 3, 1)


def _worst(pred, measured, se):
    return float(((measured - pred).abs() / se).max())


def _check(pred, measured, se, limit=4.5):
    """The prediction is within ``limit`` standard errors everywhere, and the same test
    rejects twice the prediction and no correction at all (more than 6 standard errors)."""
    assert _worst(pred, measured, se) < limit
    assert _worst(2 * pred, measured, se) > 6 and _worst(0 * pred, measured, se) > 6


def _extrapolated(by_width):
    """``Q_inf`` from ``n Q(n) = Q_inf + c / n`` at widths n and 2n, with its standard error;
    ``by_width[n]`` holds independent estimates ``(batches, ...)``."""
    (n1, q1), (n2, q2) = sorted(by_width.items())
    assert n2 == 2 * n1
    value = 2 * q2.mean(0) - q1.mean(0)
    se = (4 * q2.var(0) / len(q2) + q1.var(0) / len(q1)).sqrt()
    return value, se


# ---- Monte Carlo of finite networks ----------------------------------------------------------

def test_sampled_ntk_is_the_ntk_torch_func_computes_for_the_same_network():
    net = _net(wn.Tanh())
    mc = wn.theory.finite_width_samples(net, X, n=7, samples=2, seed=3)
    # the same weights, drawn in the same order, in an nn.Module with ntk-parameterized layers
    gen = torch.Generator().manual_seed(3)
    dims = (3, 7, 7, 1)

    weights = []
    for k, (w_std, _) in enumerate(SCALES):
        W = torch.randn(2, dims[k + 1], dims[k], generator=gen, dtype=D) * (w_std / math.sqrt(dims[k]))
        b = torch.randn(2, dims[k + 1], 1, generator=gen, dtype=D)
        weights.append((W, b))

    class MLP(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.w = nn.ParameterList([nn.Parameter(W[s] / (ws / math.sqrt(dims[k])))
                                       for k, ((W, _), (ws, _)) in enumerate(zip(weights, SCALES))])
            self.b = nn.ParameterList([nn.Parameter(b[s, :, 0]) for _, b in weights])

        def forward(self, x):
            h = x
            for k, (ws, bs) in enumerate(SCALES):
                h = h @ self.w[k].T * (ws / math.sqrt(dims[k])) + bs * self.b[k]
                if k < 2:
                    h = torch.tanh(h)
            return h

    mc = wn.theory.finite_width_samples(net, X, n=7, samples=2, seed=3, dntk=True)
    for s in range(2):
        model = MLP(s)
        torch.testing.assert_close(model(X)[:, 0], mc.outputs[s], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(wn.empirical.ntk(model, X), mc.ntk[s], rtol=1e-10, atol=1e-12)
        # the NTK's derivative along each output's gradient, by central differences
        params = list(model.parameters())
        for c in range(3):
            grads = torch.autograd.grad(model(X)[c, 0], params)
            eps, moved = 1e-5, []
            for sign in (1, -1):
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.add_(sign * eps * g)
                moved.append(wn.empirical.ntk(model, X))
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.sub_(sign * eps * g)
            torch.testing.assert_close((moved[0] - moved[1]) / (2 * eps), mc.dntk[s, :, :, c], rtol=1e-6, atol=1e-8)


def _rb_means(phi, scales, x, n, networks, seed, ntk=True):
    """``(E[f f | layer L-2], E[Theta_hat | layer L-2])`` per network, ``(S, N, N)`` each, for
    an MLP with ``L - 1 = len(scales) - 1`` hidden layers: the layers up to the last-but-one
    hidden one are sampled (with their full NTK matrices ``H_ab`` ``(n, n)``, forward:
    ``H' = G I + (C_W/n) W diag(s'_a) H diag(s'_b) W^T``), the last hidden layer and the readout
    integrated out exactly. Given the sampled layers, the last hidden unit j has
    ``z_j = u^T w + sqrt(C_b) b`` (w standard normal, ``u_e = sqrt(C_W/n) s_e``) and NTK
    ``H_jj = G + w^T M w`` with ``M_ab = (C_W/n) diag(s'_a) H_ab diag(s'_b)``; Gaussian
    integration by parts gives ``E[g(z) w^T M w] = tr M <g> + sum_ef (u_e^T M u_f) <d_e d_f g>``,
    and ``E[f f | .] = C_b + C_W <s s>_G`` by the layer's kernel rule (the second is None
    with ``ntk=False``).

    The (n, n) matrices ``H_ab`` are kept in the structured forms they have, never built
    where they need not be: after the first layer ``H_ab = K1_ab I`` (its diagonal,
    ``("diag", h)``, ``h`` ``(S, a, b, n)``), after one more
    ``H_ab = G_ab I + (C_W/n) W diag(h'_ab) W^T`` (``("low", G, W, h')``), dense ``(S, a, b, n, n)``
    only from a third layer on. Only ``tr M_ab`` and ``u_e^T M_ab u_f`` are read from them:
    the same draws and the same numbers (to rounding) as the dense recursion, in O(S n^2)
    rather than O(S n^3) work and memory per layer."""
    from widenet.theory._fw_gauss import Gauss, chain

    g = torch.Generator().manual_seed(seed)
    (w0, b0), *middle, (wl, bl), (wo, bo) = scales
    N = x.shape[0]
    K1 = w0**2 * x @ x.T / x.shape[1] + b0**2
    z = torch.randn(networks, n, N, generator=g, dtype=D) @ torch.linalg.cholesky(K1).T
    H = ("diag", K1[None, :, :, None].expand(1, N, N, n))  # K1_ab I
    eye = torch.eye(n, dtype=D)

    def dense(H):
        if H[0] == "dense":
            return H[1]
        if H[0] == "diag":
            return H[1][..., None] * eye  # (S, a, b, n, n)
        _, G, W, h, cm = H  # G I + cm W diag(h) W^T
        return G[..., None, None] * eye + cm * (W[:, None, None] * h[..., None, :]) @ W.transpose(1, 2)[:, None, None]

    for w, b in middle:
        s, s1 = phi.fn(z), phi.derivative(z)
        G = b**2 + w**2 / n * torch.einsum("ska,skb->sab", s, s)
        W = torch.randn(networks, n, n, generator=g, dtype=D)
        if ntk:
            t1 = s1.transpose(1, 2)
            if H[0] == "diag":  # diag(s'_a) H_ab diag(s'_b) is diagonal too
                H = ("low", G, W, t1[:, :, None, :] * H[1] * t1[:, None, :, :], w**2 / n)
            else:
                inner = t1[:, :, None, :, None] * dense(H) * t1[:, None, :, None, :]
                H = ("dense", G[..., None, None] * eye + w**2 / n * W[:, None, None] @ inner @ W.transpose(1, 2)[:, None, None])
        z = w / math.sqrt(n) * W @ s + b * torch.randn(networks, n, 1, generator=g, dtype=D)
    s, s1 = phi.fn(z), phi.derivative(z)
    c = wl**2 / n
    G = bl**2 + c * torch.einsum("ska,skb->sab", s, s)
    q = G.diagonal(dim1=1, dim2=2)
    t, tdot = phi.dual(q[:, :, None].expand_as(G), q[:, None, :].expand_as(G), G)
    if not ntk:
        return bo**2 + wo**2 * t, None
    # M_ab = c diag(s1_a) H_ab diag(s1_b): its trace, and u_e^T M_ab u_f = c^2 v_ae^T H_ab v_bf
    # with v_ae = s1_a s_e
    t1 = s1.transpose(1, 2)  # (S, a, k)
    v = t1[:, :, None, :] * s.transpose(1, 2)[:, None, :, :]  # (S, a, e, k)
    if H[0] == "diag":
        h = H[1]
        tr = c * (t1[:, :, None, :] * h * t1[:, None, :, :]).sum(-1)
        uMu = c**2 * torch.einsum("saek,sabk,sbfk->sabef", v, h.expand(len(v), -1, -1, -1), v)
    elif H[0] == "low":
        _, Gm, W, h, cm = H  # H_ab = Gm_ab I + cm W diag(h_ab) W^T
        hkk = Gm[..., None] + cm * torch.einsum("skm,sabm->sabk", W * W, h)
        tr = c * (t1[:, :, None, :] * hkk * t1[:, None, :, :]).sum(-1)
        Wv = torch.einsum("skm,saek->saem", W, v)  # W^T v_ae
        uMu = c**2 * (Gm[:, :, :, None, None] * torch.einsum("saek,sbfk->sabef", v, v)
                      + cm * torch.einsum("saem,sabm,sbfm->sabef", Wv, h, Wv))
    else:
        Hd = H[1]
        tr = c * (t1[:, :, None, :] * Hd.diagonal(dim1=-2, dim2=-1) * t1[:, None, :, :]).sum(-1)
        uMu = c**2 * torch.einsum("saek,sabkl,sbfl->sabef", v, Hd, v)
    a, b = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    if isinstance(phi, wn.ABRelu):
        # <d_e d_f (phi'_a phi'_b)> in closed form, phi' = a 1{z < 0} + b 1{z > 0}: Price's
        # theorem on <phi' phi'> = (a^2 + b^2)/2 - (a - b)^2 theta / (2 pi) gives
        # (a - b)^2 / (2 pi sqrt(det)) at (e, f) = (a, b) and -k / q_a times that at (a, a);
        # for one input, <(phi'^2)''> = 2 d<phi'^2>/dq = 0
        det = (q[:, a] * q[:, b] - G**2).clamp_min(1e-300)
        off = ~torch.eye(N, dtype=torch.bool)
        dd = off * (float(phi.a) - float(phi.b)) ** 2 / (2 * math.pi * det.sqrt())
        da, db = -G * dd / q[:, a], -G * dd / q[:, b]
        second = uMu[:, a, b, a, a] * da + 2 * uMu[:, a, b, a, b] * dd + uMu[:, a, b, b, b] * db
        return bo**2 + wo**2 * t, bo**2 + wo**2 * (t + (G + tr) * tdot + second)
    gs = Gauss(G, chain(phi), {}, step=0.6)  # ~1e-5 relative: far below the sampling noise
    gs.expect([(0, 0), (1, 1), (3, 1), (2, 2), (1, 3)])
    second = uMu[:, a, b, a, a] * gs.two(3, 1) + 2 * uMu[:, a, b, a, b] * gs.two(2, 2) + uMu[:, a, b, b, b] * gs.two(1, 3)
    return bo**2 + wo**2 * t, bo**2 + wo**2 * (gs.two(0, 0) + (G + tr) * gs.two(1, 1) + second)


@pytest.mark.parametrize("phi", [wn.Tanh(), wn.Erf(), wn.Gelu()], ids=repr)
def test_four_point_and_nngp_correction_match_monte_carlo(phi):
    net = _net(phi)
    fw = wn.theory.finite_width(net, X)
    four = {}
    for n in (24, 48):
        batches = []
        for b in range(16):
            G = wn.theory.finite_width_samples(net, X, n, 2500, seed=1000 * n + b).metric
            batches.append(n * _pairings(torch.cov(G.reshape(len(G), -1).T).reshape(3, 3, 3, 3)))
        four[n] = torch.stack(batches)
    _check(fw.four_point, *_extrapolated(four))
    k1 = {n: torch.stack([n * (_rb_means(phi, SCALES, X, n, 20000, 100 * n + b, ntk=False)[0].mean(0) - fw.nngp) for b in range(10)])
          for n in (32, 64)}
    _check(fw.nngp_correction, *_extrapolated(k1))


# Erf runs the same quadrature path as Tanh and needs twice the batches (its correction is
# smaller against the noise): a long study, in `make test-slow`
@pytest.mark.parametrize("phi, batches", [(wn.Tanh(), 8), pytest.param(wn.Erf(), 16, marks=pytest.mark.slow)],
                         ids=["Tanh", "Erf"])
def test_ntk_correction_matches_monte_carlo(phi, batches):
    fw = wn.theory.finite_width(_net(phi), X)
    th = {n: torch.stack([n * (_rb_means(phi, SCALES, X, n, 4000, 10 * n + b)[1].mean(0) - fw.ntk)
                          for b in range(batches)]) for n in (32, 64)}
    value, se = _extrapolated(th)
    # E[Theta_hat | first hidden layer] removes the later layers' noise, not the first's, which
    # dominates the off-diagonal entries of nearly orthogonal inputs: the diagonal is measured
    # to a few per cent and checked both ways, the off-diagonal only within its errors
    diag = torch.eye(3, dtype=torch.bool)
    _check(fw.ntk_correction[diag], value[diag], se[diag])
    assert _worst(fw.ntk_correction, value, se) < 4.5


def test_three_hidden_layers_means_match_monte_carlo():
    # the terms that carry a previous layer's K1 and Theta1 forward first act here
    phi, scales, x = wn.Tanh(), SCALES[:2] + [(1.25, 0.2)] + SCALES[2:], X[:2]
    fw = wn.theory.finite_width(_net(phi, scales), x)
    runs = {n: [_rb_means(phi, scales, x, n, 3000, 10 * n + b) for b in range(8)] for n in (24, 48)}
    diag = torch.eye(2, dtype=torch.bool)
    for i, limit, correction in ((0, fw.nngp, fw.nngp_correction), (1, fw.ntk, fw.ntk_correction)):
        value, se = _extrapolated({n: torch.stack([n * (r[i].mean(0) - limit) for r in runs[n]]) for n in runs})
        _check(correction[diag], value[diag], se[diag])
        assert _worst(correction, value, se) < 4.5


def _cross(ntk, outputs):
    """``Cov(Theta_hat_ab, f_c f_d)`` ``(N, N, N, N)`` over the first axis of the samples."""
    th = ntk.reshape(len(ntk), -1)
    ff = torch.einsum("sc,sd->scd", outputs, outputs).reshape(len(th), -1)
    n = ntk.shape[-1]
    return ((th - th.mean(0)).T @ (ff - ff.mean(0)) / (len(th) - 1)).reshape(n, n, n, n)


@pytest.mark.parametrize("phi, x", [(wn.Erf(), X), (wn.Relu(), X[:2])], ids=["Erf", "Relu-two-inputs"])
def test_ntk_variance_and_output_correlation_match_monte_carlo_with_unequal_widths(phi, x):
    net = _net(phi)
    fw = wn.theory.finite_width(net, x, widths=(1, 2))
    N = x.shape[0]
    var, cross = {}, {}
    for n in (24, 48):
        v, c = [], []
        for b in range(10):
            mc = wn.theory.finite_width_samples(net, x, n, 4000, widths=(1, 2), seed=7 * n + b)
            v.append(n * torch.cov(mc.ntk.reshape(len(mc.ntk), -1).T).reshape(N, N, N, N))
            c.append(n * _cross(mc.ntk, mc.outputs))
        var[n], cross[n] = torch.stack(v), torch.stack(c)
    _check(fw.ntk_variance, *_extrapolated(var))
    _check(fw.ntk_output_correlation, *_extrapolated(cross))


def test_one_hidden_layer_is_exact_at_every_width():
    # f and the NTK average n independent units: K1 = Theta1 = 0, and n Cov is the
    # single unit's covariance at every n, so width-1 networks measure the tensors exactly
    net = _net(wn.Tanh(), SCALES[:2])
    fw = wn.theory.finite_width(net, X)
    assert float(fw.nngp_correction.abs().max()) == 0 and float(fw.ntk_correction.abs().max()) == 0
    mc = wn.theory.finite_width_samples(net, X, n=1, samples=800000, seed=11)

    def batches(t):
        return t.reshape(40, -1, *t.shape[1:])

    def measured(per_batch):
        return per_batch.mean(0), per_batch.std(0) / math.sqrt(len(per_batch))

    flat = lambda t: t.reshape(len(t), -1).T  # noqa: E731
    var = torch.stack([torch.cov(flat(b)).reshape(3, 3, 3, 3) for b in batches(mc.ntk)])
    _check(fw.ntk_variance, *measured(var))
    four = torch.stack([_pairings(torch.cov(flat(b)).reshape(3, 3, 3, 3)) for b in batches(mc.metric)])
    _check(fw.four_point, *measured(four))
    cross = torch.stack([_cross(a, b) for a, b in zip(batches(mc.ntk), batches(mc.outputs))])
    _check(fw.ntk_output_correlation, *measured(cross))


@pytest.mark.parametrize("phi", [wn.Tanh(), wn.Erf(), wn.Relu()], ids=repr)
def test_dntk_and_the_first_step_match_monte_carlo(phi):
    # (for ReLU the dNTK's terms in phi'' vanish along every path, almost surely: autograd's
    # and the prediction's convention alike)
    net, x = _net(phi), X[:2]
    fw = wn.theory.finite_width(net, x)
    moments, means = {}, {}
    for n in (16, 32):
        m, mean = [], []
        for b in range(6):
            mc = wn.theory.finite_width_samples(net, x, n, 3000, seed=31 * n + b, dntk=True)
            m.append(n * torch.einsum("sabc,sd->sabcd", mc.dntk, mc.outputs).mean(0))  # n E[dTheta_abc f_d]
            mean.append(n * mc.dntk.mean(0))
        moments[n], means[n] = torch.stack(m), torch.stack(mean)
    P = fw.dntk  # n E[dH_abc f_d]; dTheta_abc = dH_abc + dH_bac
    value, se = _extrapolated(moments)
    _check(P + P.transpose(0, 1), value, se)
    # the first step moves the NTK by -lr sum_c dTheta_abc (f_c - y_c); E[dTheta] = 0 (it is odd
    # in the readout), so to first order in lr the targets drop out of the expected change
    value_mean, se_mean = _extrapolated(means)
    assert _worst(torch.zeros_like(value_mean), value_mean, se_mean) < 4.5
    full = P + P.transpose(0, 1)
    torch.testing.assert_close(fw.ntk_change(lr=0.3, n=50), -0.3 / 50 * full.diagonal(dim1=2, dim2=3).sum(-1))
    # its entries sum nearly cancelling terms: measured within errors (not to a few per cent)
    step, step_se = -value.diagonal(dim1=2, dim2=3).sum(-1), se.diagonal(dim1=2, dim2=3).pow(2).sum(-1).sqrt()
    assert _worst(fw.ntk_change(lr=1.0, n=1), step, step_se) < 4.5


def test_ddntk_means_match_monte_carlo(monkeypatch):
    # every network's ddNTKs by nested forward modes over backpropagated gradients; their
    # means are O(1/n), their fluctuations O(n^-3/2): n * mean - prediction extrapolated in 1/n
    # (a batch's 300 networks in one vmap rather than 32 at a time: the same draws and,
    # measured, the same ddNTKs bit for bit, in a third of the time; ~0.3 GB at n = 32)
    import widenet.theory._fw_samples as fw_samples

    monkeypatch.setattr(fw_samples, "_DD_AT_ONCE", 300)
    net = _net(wn.Tanh())
    I, II = wn.theory.finite_width(net, X).ddntk
    by_width = {}
    for n in (16, 32):
        batches = [wn.theory.finite_width_samples(net, X, n, 300, seed=7 * n + b, ddntk=True).ddntk for b in range(4)]
        by_width[n] = [torch.stack([n * d[k].mean(0) for d in batches]) for k in range(2)]
    for k, pred in enumerate((I, II)):
        _check(pred, *_extrapolated({n: v[k] for n, v in by_width.items()}))


def _trained_mean_check(net, n, samples, t):
    """The trained networks' mean prediction against ``trained_mean`` at width n: the
    correction, n (mean - frozen), within errors (antithetic pairs; the O(1/n) remainder
    of n (mean - frozen) is below them at these widths)."""
    fw = wn.theory.finite_width(net, X)
    lr = 0.5 / float(torch.linalg.eigvalsh(fw.ntk).max())
    tm = fw.trained_mean(XT, Y, lr=lr, t=t)
    mc = wn.theory.finite_width_training(net, X, Y, XT, n=n, samples=samples, lr=lr, t=t, seed=n)
    _check(tm.correction, n * (mc.mean - tm.frozen), n * mc.stderr)
    torch.testing.assert_close(tm.at(n), tm.frozen + tm.correction / n)
    torch.testing.assert_close(sum(tm.parts.values()), tm.correction)


XT = torch.tensor([[0.5, 0.5, 0.5], [-0.2, 0.9, -0.8]], dtype=D)
Y = torch.tensor([0.8, -0.5, 0.3], dtype=D)


# a long study (30,000 trained networks): two hidden layers below carry every term of the
# one-hidden-layer case and more, and the exact special cases are checked apart
@pytest.mark.slow
def test_trained_mean_matches_trained_networks_one_hidden_layer():
    _trained_mean_check(wn.Serial(wn.Dense(1, 1.2, 0.3), wn.Tanh(), wn.Dense(1, 1.5, 0.2)), 128, 30000, [10, 40])


def test_trained_mean_matches_trained_networks_two_hidden_layers():
    # 4000 networks (2000 antithetic pairs): the prediction lies within 1.74 standard errors,
    # twice it and none are rejected at 10.1 and 7.6 (measured; 8000 gave 1.21, 13.8, 11.9)
    _trained_mean_check(_net(wn.Erf(), [(1.2, 0.3), (1.5, 0.2), (1.5, 0.2)]), 64, 4000, [10, 40])


def test_trained_mean_is_exact_where_it_must_be():
    net = _net(wn.Erf())
    fw = wn.theory.finite_width(net, X)
    lr = 0.5 / float(torch.linalg.eigvalsh(fw.ntk).max())
    # the frozen prediction is kernel regression with the NTK run for t steps
    tm = fw.trained_mean(XT, Y, lr=lr, t=[0, 3, 2000])
    Theta = wn.theory.finite_width(net, torch.cat([X, XT])).ntk
    M = torch.eye(3, dtype=D) - lr * Theta[:3, :3]
    for row, t in enumerate((0, 3, 2000)):
        series = sum(torch.linalg.matrix_power(M, s) for s in range(t)) if t else torch.zeros(3, 3, dtype=D)
        torch.testing.assert_close(tm.frozen[row], lr * Theta[3:, :3] @ series @ Y, rtol=1e-9, atol=1e-12)
    assert float(tm.correction[0].abs().max()) == 0
    # on the training inputs a converged network fits the targets at every width: the
    # correction vanishes there (here with x_test repeating x: duplicated inputs included)
    on_train = fw.trained_mean(X, Y, lr=lr, t=2000)
    torch.testing.assert_close(on_train.frozen, Y, rtol=1e-9, atol=1e-12)
    assert float(on_train.correction.abs().max()) < 1e-6 * float(tm.correction[2].abs().max())
    # a (N, N, N, N) field at a repeated input equals it at the original (the quadrature's
    # accuracy over three and four inputs, where the two copies are different variables)
    both = wn.theory.finite_width(net, torch.cat([X, X[:1]]))
    for field in (both.four_point, both.ntk_variance, both.dntk, *both.ddntk):
        torch.testing.assert_close(field[3], field[0], rtol=1e-4, atol=1e-4 * float(field.abs().max()))


def test_relu_means_match_monte_carlo_and_vanish_for_one_input():
    phi = wn.Relu()
    fw = wn.theory.finite_width(_net(phi), X)
    # E[relu(z)^2] = E[z^2] / 2 and E[step(z) H] = E[H] / 2 for any symmetric z: no diagonal shift
    assert float(fw.nngp_correction.diagonal().abs().max()) == 0 == float(fw.ntk_correction.diagonal().abs().max())
    off = ~torch.eye(3, dtype=torch.bool)
    k1 = {n: torch.stack([n * (_rb_means(phi, SCALES, X, n, 20000, 100 * n + b, ntk=False)[0].mean(0) - fw.nngp) for b in range(10)])
          for n in (32, 64)}
    value, se = _extrapolated(k1)
    _check(fw.nngp_correction[off], value[off], se[off])
    runs = {n: [_rb_means(phi, SCALES, X, n, 4000, 10 * n + b)[1] for b in range(8)] for n in (32, 64)}
    value, se = _extrapolated({n: torch.stack([n * (r.mean(0) - fw.ntk) for r in runs[n]]) for n in runs})
    _check(fw.ntk_correction[off], value[off], se[off])


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (-1.0, 1.0), (-0.5, 1.2)], ids=["Relu", "Abs", "ABRelu"])
def test_relu_family_is_the_limit_of_softplus(a, b):
    # b softplus_beta(z) - a softplus_beta(-z) -> a min(z, 0) + b max(z, 0) as beta grows: the
    # smooth quadrature path approaches the closed forms (off the diagonal, where the ReLU
    # family's are smooth in the covariance)
    off = ~torch.eye(3, dtype=torch.bool)
    kinked = wn.theory.finite_width(_net(wn.ABRelu(a, b)), X)
    gaps = []
    for beta in (10.0, 20.0, 40.0):
        def smooth(z, beta=beta):
            return b * torch.nn.functional.softplus(z, beta) - a * torch.nn.functional.softplus(-z, beta)
        soft = wn.theory.finite_width(_net(wn.Softplus(beta) if a == 0 else wn.Elementwise(smooth, degree=400)), X)
        gaps.append([float((soft.nngp_correction - kinked.nngp_correction)[off].abs().max()),
                     float((soft.ntk_correction - kinked.ntk_correction)[off].abs().max())])
    gaps = torch.tensor(gaps)
    assert bool((gaps[1:] < gaps[:-1]).all()) and float(gaps[-1].max()) < 5e-3


def test_leaky_relu_two_point_correction_matches_monte_carlo():
    phi = wn.LeakyRelu(0.2)
    fw = wn.theory.finite_width(_net(phi), X)
    assert float(fw.nngp_correction.diagonal().abs().max()) == 0 == float(fw.ntk_correction.diagonal().abs().max())
    off = ~torch.eye(3, dtype=torch.bool)
    k1 = {n: torch.stack([n * (_rb_means(phi, SCALES, X, n, 20000, 100 * n + b, ntk=False)[0].mean(0) - fw.nngp) for b in range(10)])
          for n in (32, 64)}
    _check(fw.nngp_correction[off], *(t[off] for t in _extrapolated(k1)))


def test_relu_four_point_grows_linearly_with_depth():
    # critical ReLU (C_W = 2, C_b = 0), one input: K is the same at every layer and each
    # ReLU layer adds C_W^2 (<s^4> - <s^2>^2) = 5 K^2 to V_(aa)(aa), so the connected
    # four-point function of the output is 3 V = 15 L K^2 after L ReLU layers: the output's
    # excess kurtosis 15 L / n grows with depth over width (Hanin & Nica, arXiv 1909.05989)
    x = X[:1]
    for depth in (1, 2, 4):
        net = _net(wn.Relu(), [(math.sqrt(2), 0.0)] * (depth + 1))
        fw = wn.theory.finite_width(net, x)
        torch.testing.assert_close(fw.four_point[0, 0, 0, 0], 15 * depth * fw.nngp[0, 0] ** 2, rtol=1e-12, atol=0)
    net = _net(wn.Relu(), [(math.sqrt(2), 0.0)] * 3)
    fw = wn.theory.finite_width(net, x)
    four = {}
    for n in (32, 64):
        G = torch.stack([wn.theory.finite_width_samples(net, x, n, 4000, seed=n + b).metric[:, 0, 0] for b in range(8)])
        four[n] = 3 * n * G.var(1)
    _check(fw.four_point[0, 0, 0, 0], *_extrapolated(four))


# ---- exact special cases and independent computations ---------------------------------------

def test_deep_linear_networks_have_their_closed_form():
    # phi(z) = z, C_b = 0 (PDLT ch. 3): V^(l)_(ab)(cd) = (l - 1)(K_ac K_bd + K_ad K_bc) at the
    # l-th layer and no two-point correction, whatever the depth.
    for depth in (2, 3, 5):
        layers = [wn.Dense(1, 1.3, None)]
        for _ in range(depth - 1):
            layers += [wn.Monomial(1), wn.Dense(1, 0.9, None)]
        fw = wn.theory.finite_width(wn.Serial(*layers), X)
        K = fw.nngp
        vertex = (depth - 1) * (torch.einsum("ac,bd->abcd", K, K) + torch.einsum("ad,bc->abcd", K, K))
        torch.testing.assert_close(fw.four_point, _pairings(vertex), rtol=1e-10, atol=1e-12)
        assert float(fw.nngp_correction.abs().max()) < 1e-12


def test_limit_is_the_networks_kernel_and_pairs_equal_the_full_recursion():
    net = _net(wn.Tanh(), SCALES + [(1.4, 0.1)])
    x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    fw = wn.theory.finite_width(net, x)
    k = net.kernel(x)
    torch.testing.assert_close(fw.nngp, k.nngp, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(fw.ntk, k.ntk, rtol=1e-13, atol=1e-14)
    # the (N, N) fields come from N(N+1)/2 two-input problems; the N-input recursion that
    # gives the (N, N, N, N) ones carries them too
    torch.testing.assert_close(fw._full.K1[0], fw.nngp_correction, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(fw._full.Theta1[0], fw.ntk_correction, rtol=1e-11, atol=1e-13)
    assert fw.ntk_variance.shape == fw.four_point.shape == fw.ntk_output_correlation.shape == (5, 5, 5, 5)
    torch.testing.assert_close(fw.nngp_at(100), fw.nngp + fw.nngp_correction / 100)


def test_quadrature_is_converged(monkeypatch):
    net = _net(wn.Tanh(), [(1.5, 0.3), (1.6, 0.2), (1.6, 0.2), (1.1, 0.1)])
    x = 1.5 * X
    fw = wn.theory.finite_width(net, x)
    monkeypatch.setattr(fw_gauss, "_STEP", 0.1)
    fine = wn.theory.finite_width(net, x)
    for a, b in ((fw.nngp_correction, fine.nngp_correction), (fw.ntk_correction, fine.ntk_correction)):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-9


def test_hidden_widths_enter_through_their_own_terms():
    # with two hidden layers, E[f f] depends on the first hidden layer's fluctuations only
    # (the second's preactivations are Gaussian given it): K1 scales with 1 / rho_1 alone
    net = _net(wn.Erf())
    base = wn.theory.finite_width(net, X)
    torch.testing.assert_close(wn.theory.finite_width(net, X, widths=(2, 5)).nngp_correction,
                               base.nngp_correction / 2, rtol=1e-12, atol=1e-14)
    # every 1/n term is linear in (1/rho_1, 1/rho_2)
    a, b = (wn.theory.finite_width(net, X, widths=w).ntk_correction for w in ((1, 1e12), (1e12, 1)))
    torch.testing.assert_close(a + b, base.ntk_correction, rtol=1e-9, atol=1e-12)


# ---- bad input ---------------------------------------------------------------------------------

def test_unsupported_architectures_and_inputs_are_refused_naming_the_layer():
    fwf = wn.theory.finite_width
    with pytest.raises(ParameterError, match=r"Sign\(\) at position 1 is not smooth"):
        fwf(wn.Serial(wn.Dense(1), wn.Sign(), wn.Dense(1)), X)
    relu = fwf(wn.Serial(wn.Dense(1), wn.Relu(), wn.Dense(1)), X)
    with pytest.raises(ParameterError, match=r"for the ReLU family only the \(N, N\) statistics"):
        _ = relu.four_point
    with pytest.raises(ParameterError, match=r"LayerNorm\(.*\) at position 2 is not supported here; the network "
                                             r"must be Dense \(ntk parameterization\)"):
        fwf(wn.Serial(wn.Dense(1), wn.Tanh(), wn.LayerNorm(), wn.Dense(1)), X)
    with pytest.raises(ParameterError, match=r"Conv\(.*\) at position 0 is not supported here"):
        fwf(wn.Serial(wn.Conv(1, 3), wn.Tanh(), wn.Dense(1)), X)
    with pytest.raises(ParameterError, match="'standard' parameterization; only 'ntk'"):
        fwf(wn.Serial(wn.Dense(1, parameterization="standard"), wn.Tanh(), wn.Dense(1)), X)
    with pytest.raises(ParameterError, match="end with a Dense layer"):
        fwf(wn.Serial(wn.Dense(1), wn.Tanh()), X)
    with pytest.raises(NonFiniteInputError, match="x must be finite"):
        fwf(_net(wn.Tanh()), X * float("nan"))
    with pytest.raises(ShapeError, match=r"x must have shape \(N, d\)"):
        fwf(_net(wn.Tanh()), X[0])
    with pytest.raises(ParameterError, match=r"one positive relative width per hidden layer \(2 here; got \(1, 0\)\)"):
        fwf(_net(wn.Tanh()), X, widths=(1, 0))
    fw = fwf(_net(wn.Tanh()), X, memory="1KB")
    for bad in (0, -3, float("inf"), "64"):
        with pytest.raises(ParameterError, match=r"n, the width scale, must be a positive number"):
            fw.ntk_at(bad)
    with pytest.raises(OutOfMemoryError, match=r"statistics of N=3 inputs need about .* GiB .* over the memory budget"):
        _ = fw.four_point
    nested = wn.Serial(wn.Serial(wn.Dense(1, 1.2, 0.3), wn.Tanh()), wn.Dense(1, 1.1, 0.1))
    torch.testing.assert_close(fwf(nested, X).ntk_variance,
                               fwf(wn.Serial(wn.Dense(1, 1.2, 0.3), wn.Tanh(), wn.Dense(1, 1.1, 0.1)), X).ntk_variance)
    with pytest.raises(ParameterError, match="n must be"):
        wn.theory.finite_width_samples(_net(wn.Relu()), X, n=0, samples=10)
    tm = fwf(_net(wn.Tanh()), X).trained_mean
    with pytest.raises(ParameterError, match=r"readout Dense\(out_features=2.* has 2 outputs; .* end the network with Dense\(1\)"):
        fwf(wn.Serial(wn.Dense(1), wn.Tanh(), wn.Dense(2)), X).trained_mean(XT, Y, lr=0.1, t=5)
    with pytest.raises(ShapeError, match=r"y_train must have shape \(3,\)"):
        tm(XT, Y[:2], lr=0.1, t=5)
    with pytest.raises(ShapeError, match=r"x_test must have shape \(M, 3\)"):
        tm(XT[:, :2], Y, lr=0.1, t=5)
    with pytest.raises(NonFiniteInputError, match="x_test must be finite"):
        tm(XT * float("nan"), Y, lr=0.1, t=5)
    with pytest.raises(ParameterError, match=r"lr must be positive and below 2 / lambda_max\(Theta\)"):
        tm(XT, Y, lr=100.0, t=5)
    with pytest.raises(ParameterError, match="t must be a non-negative number of steps"):
        tm(XT, Y, lr=0.1, t=-1)
    with pytest.raises(ParameterError, match=r"trained mean needs a smooth activation, and LeakyRelu.* order n\^-1/2"):
        fwf(_net(wn.LeakyRelu(0.1)), X[:1]).trained_mean(XT[:1], Y[:1], lr=0.1, t=5)
    with pytest.raises(ParameterError, match="samples must be even"):
        wn.theory.finite_width_training(_net(wn.Tanh()), X, Y, XT, n=8, samples=3, lr=0.1, t=1)
