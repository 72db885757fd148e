"""widenet.predict against independent dense computations (torch.linalg: solves, inverses,
matrix exponentials of the linear ODEs), scipy's multivariate normal, and finite differences."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import widenet as wn
from widenet import predict as P
from widenet.errors import NonFiniteInputError, NumericalError, ParameterError, ShapeError

D = torch.float64


def _net():
    return wn.Serial(wn.Dense(512, 1.5, 0.1), wn.Relu(), wn.Dense(512, 1.5, 0.1), wn.Relu(), wn.Dense(1, 1.5, 0.1))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(14, 5, generator=g, dtype=D)
    xt = torch.randn(6, 5, generator=g, dtype=D)
    y = torch.randn(14, 3, generator=g, dtype=D)
    net = _net()
    return dict(x=x, xt=xt, y=y, net=net, k=net.kernel(x), kt=net.kernel(xt, x), ktt=net.kernel(xt))


def close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
    assert err <= tol, err


def _reg(k, diag_reg):
    return k + diag_reg * k.diagonal().mean() * torch.eye(len(k), dtype=k.dtype)


# ---- gp_inference -----------------------------------------------------------------------------

@pytest.mark.parametrize("reg", [0.0, 1e-2])
def test_gp_inference_matches_dense_solve(data, reg):
    k, kt, ktt, y = data["k"].nngp, data["kt"].nngp, data["ktt"].nngp, data["y"]
    kr = _reg(k, reg)
    mean, cov = P.gp_inference(k, y, reg)(kt, ktt)
    close(mean, kt @ torch.linalg.solve(kr, y))
    close(cov, ktt - kt @ torch.linalg.inv(kr) @ kt.T)
    # Variances only, in chunks of one test point (a tiny memory budget), equal the diagonal.
    _, var = P.gp_inference(k, y, reg, memory=1)(kt, ktt.diagonal())
    close(var, cov.diagonal())
    # 1-D targets give 1-D results; the NTK-GP is the same computation with the NTK.
    close(P.gp_inference(k, y[:, 0], reg)(kt), mean[:, 0])
    mean_gp, cov_gp = P.gp_inference(data["k"], y, reg, get="ntkgp")(data["kt"], data["ktt"])
    theta, theta_t = _reg(data["k"].ntk, reg), data["kt"].ntk
    close(mean_gp, theta_t @ torch.linalg.solve(theta, y))
    close(cov_gp, data["ktt"].ntk - theta_t @ torch.linalg.inv(theta) @ theta_t.T)


def test_gp_inference_ntk_mode_is_the_converged_ensemble(data):
    """Lee et al. 2019, eq. 16: mean Theta_td Theta^-1 y and covariance
    K_tt + Theta_td Theta^-1 K Theta^-1 Theta_dt - (Theta_td Theta^-1 K_dt + h.c.)."""
    k, kt, ktt, y = data["k"], data["kt"], data["ktt"], data["y"]
    mean, cov = P.gp_inference(k, y, get="ntk")(kt, ktt)
    a = kt.ntk @ torch.linalg.inv(k.ntk)
    close(mean, a @ y)
    expected = ktt.nngp + a @ k.nngp @ a.T - a @ kt.nngp.T - kt.nngp @ a.T
    close(cov, expected, 1e-9)
    _, var = P.gp_inference(k, y, get="ntk")(kt, ktt.nngp.diagonal())
    close(var, expected.diagonal(), 1e-9)
    with pytest.raises(ParameterError, match="Kernel objects"):
        P.gp_inference(k.ntk, y, get="ntk")(kt.ntk, ktt.nngp)


def test_gp_inference_train_set_and_device_dtype(data):
    k, y = data["k"].nngp, data["y"]
    mean, cov = P.gp_inference(k, y)(None, True)
    close(mean, y)
    assert float(cov.abs().max()) == 0.0
    # float32 kernels are solved in float64 and come back in float32.
    mean32 = P.gp_inference(k.float(), y.float(), 1e-3)(data["kt"].nngp.float())
    assert mean32.dtype == torch.float32
    close(mean32.double(), P.gp_inference(k, y, 1e-3)(data["kt"].nngp), 1e-5)


# ---- gradient_descent_mse -------------------------------------------------------------------

def _flow(theta, y, f0, lr, t):
    """Dense reference: f(t) = y + exp(-lr t Theta / N) (f0 - y)."""
    return y + torch.linalg.matrix_exp(-lr * t * theta / y.numel()) @ (f0 - y)


@pytest.mark.parametrize("reg", [0.0, 1e-3])
def test_gradient_descent_mse_matches_matrix_exponential(data, reg):
    theta, theta_t, y = data["k"].ntk, data["kt"].ntk, data["y"]
    g = torch.Generator().manual_seed(1)
    f0 = 0.3 * torch.randn(y.shape, generator=g, dtype=D)
    g0 = 0.3 * torch.randn((len(theta_t), y.shape[1]), generator=g, dtype=D)
    predict = P.gradient_descent_mse(theta, y, learning_rate=0.7, diag_reg=reg)
    thr = _reg(theta, reg)
    times = torch.tensor([[0.0, 2.0], [30.0, 400.0]], dtype=D)
    train, test = predict(times, k_test_train=theta_t, fx_train_0=f0, fx_test_0=g0)
    assert train.shape == (2, 2) + tuple(y.shape) and test.shape == (2, 2) + tuple(g0.shape)
    for i in range(2):
        for j in range(2):
            t = float(times[i, j])
            ft = _flow(thr, y, f0, 0.7, t)
            close(train[i, j], ft)
            # Lee et al. 2019, eq. 10: test outputs move by Theta_td Theta^-1 (f_t - f_0).
            close(test[i, j], g0 + theta_t @ torch.linalg.solve(thr, ft - f0))
    # t = 0 returns the initial outputs exactly.
    t0_train, t0_test = predict(0.0, theta_t, f0, g0)
    assert torch.equal(t0_train, f0) and torch.equal(t0_test, g0)
    # t = inf (eigenbasis) and t = None (Cholesky) are kernel regression.
    for t in (None, math.inf):
        train_inf, test_inf = predict(t, theta_t, f0, g0)
        close(train_inf, y, 1e-9)
        close(test_inf, g0 + theta_t @ torch.linalg.solve(thr, y - f0), 1e-9)


def test_weight_decay_matches_the_linear_ode(data):
    """With (wd/2)||p - p0||^2 in the loss the function-space ODE is affine:
    d/dt [g_tr, g_te] = -lr [[Theta/N + wd, 0], [Theta_td/N, wd]] [g_tr, g_te] - lr [Theta/N r0, Theta_td/N r0],
    g = f - f0, r0 = f0 - y; solved here by the exponential of the augmented matrix."""
    theta, theta_t, y = data["k"].ntk, data["kt"].ntk, data["y"][:, :1]
    n, m, lr, wd = len(theta), len(theta_t), 0.5, 0.05
    g = torch.Generator().manual_seed(2)
    f0 = 0.2 * torch.randn(y.shape, generator=g, dtype=D)
    g0 = 0.2 * torch.randn((m, 1), generator=g, dtype=D)
    big = torch.zeros(n + m + 1, n + m + 1, dtype=D)
    big[:n, :n] = theta / n + wd * torch.eye(n, dtype=D)
    big[n:n + m, :n] = theta_t / n
    big[n:n + m, n:n + m] = wd * torch.eye(m, dtype=D)
    r0 = f0 - y
    big[:n, -1:] = theta @ r0 / n
    big[n:n + m, -1:] = theta_t @ r0 / n
    predict = P.gradient_descent_mse(theta, y, learning_rate=lr, weight_decay=wd)
    for t in (0.5, 7.0, 60.0):
        state = torch.linalg.matrix_exp(-lr * t * big) @ torch.cat([torch.zeros(n + m, 1, dtype=D), torch.ones(1, 1, dtype=D)])
        train, test = predict(t, theta_t, f0, g0)
        close(train, f0 + state[:n], 1e-9)
        close(test, g0 + state[n:n + m], 1e-9)
    # At t = inf: kernel ridge regression with ridge wd * N.
    ridge = theta + wd * n * torch.eye(n, dtype=D)
    for t in (None, math.inf):
        train, test = predict(t, theta_t, f0, g0)
        close(test, g0 + theta_t @ torch.linalg.solve(ridge, y - f0), 1e-9)
        close(train, f0 + theta @ torch.linalg.solve(ridge, y - f0), 1e-9)


# ---- gradient_descent (ODE) -----------------------------------------------------------------

def _mse(f, y):
    return ((f - y) ** 2).sum() / (2 * y.numel())


def _cross_entropy(f, y):
    return -(torch.log_softmax(f, -1) * y).mean()


def test_ode_with_mse_equals_closed_form(data):
    theta, theta_t, y = data["k"].ntk, data["kt"].ntk, data["y"]
    times = [5.0, 0.0, 40.0]
    train, test = P.gradient_descent(_mse, theta, y, 0.5)(times, theta_t, 0.1, -0.2)
    ref_train, ref_test = P.gradient_descent_mse(theta, y, 0.5)(torch.tensor(times, dtype=D), theta_t, 0.1, -0.2)
    close(train, ref_train, 1e-8)
    close(test, ref_test, 1e-8)


def test_momentum_ode_with_mse_matches_matrix_exponential(data):
    """f'' = -Theta (f - y)/N + (m - 1)/sqrt(lr) f' in time units of sqrt(lr): linear, so
    the state (f - y, f') evolves by the exponential of [[0, I], [-Theta/N, (m-1)/sqrt(lr) I]]."""
    theta, y = data["k"].ntk, data["y"][:, :2]
    n, lr, mom = len(theta), 0.04, 0.9
    a = torch.zeros(2 * n, 2 * n, dtype=D)
    a[:n, n:] = torch.eye(n, dtype=D)
    a[n:, :n] = -theta / y.numel()
    a[n:, n:] = (mom - 1) / math.sqrt(lr) * torch.eye(n, dtype=D)
    predict = P.gradient_descent(_mse, theta, y, lr, momentum=mom)
    times = [3.0, 25.0, 80.0]
    out = predict(times)
    for t, f in zip(times, out):
        state = torch.linalg.matrix_exp(a * t * math.sqrt(lr)) @ torch.cat([-y, torch.zeros_like(y)])
        close(f, y + state[:n], 1e-7)


def test_cross_entropy_ode_matches_trained_linear_model():
    """A linear model f = phi(x) w has the constant NTK phi phi^T: small-step gradient descent
    on its weights (torch.optim.SGD) follows the function-space ODE up to O(step)."""
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(10, 40, generator=g, dtype=D) / math.sqrt(40)
    phi_t = torch.randn(4, 40, generator=g, dtype=D) / math.sqrt(40)
    labels = torch.randint(0, 3, (10,), generator=g)
    y = torch.nn.functional.one_hot(labels, 3).to(D)
    w = torch.zeros(40, 3, dtype=D, requires_grad=True)
    lr, steps = 0.05, 4000
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        _cross_entropy(phi @ w, y).backward()
        opt.step()
    train, test = P.gradient_descent(_cross_entropy, phi @ phi.T, y, lr)(steps, phi_t @ phi.T)
    with torch.no_grad():
        # Measured 1.0e-4 at this step and 5.2e-5 at half of it: the O(step) gap of Euler steps.
        close(train, phi @ w, 3e-4)
        close(test, phi_t @ w, 3e-4)


# ---- ensembles --------------------------------------------------------------------------------

def test_ensemble_matches_dense_formulas(data):
    """Lee et al. 2019, eqs. 13-16, with h_t = Theta^-1 (I - exp(-lr t Theta / N))."""
    net, x, xt, y = data["net"], data["x"], data["xt"], data["y"]
    k, kt, ktt = data["k"], data["kt"], data["ktt"]
    lr, t = 0.8, 12.0
    predict = P.gradient_descent_mse_ensemble(net, x, y, learning_rate=lr)
    n = y.numel()
    theta_inv = torch.linalg.inv(k.ntk)
    h = theta_inv @ (torch.eye(len(x), dtype=D) - torch.linalg.matrix_exp(-lr * t * k.ntk / n))
    a = kt.ntk @ h
    mean, cov = predict(t, xt, get="ntk", compute_cov=True)
    close(mean, a @ y, 1e-9)
    close(cov, ktt.nngp + a @ k.nngp @ a.T - a @ kt.nngp.T - kt.nngp @ a.T, 1e-9)
    # NNGP mode (only the readout trained): covariance K_tt - K_td h_2t K_dt with the NNGP.
    kinv = torch.linalg.inv(k.nngp)
    h1 = kinv @ (torch.eye(len(x), dtype=D) - torch.linalg.matrix_exp(-lr * t * k.nngp / n))
    h2 = kinv @ (torch.eye(len(x), dtype=D) - torch.linalg.matrix_exp(-2 * lr * t * k.nngp / n))
    mean, cov = predict(t, xt, get="nngp", compute_cov=True)
    close(mean, kt.nngp @ h1 @ y, 1e-8)
    close(cov, ktt.nngp - kt.nngp @ h2 @ kt.nngp.T, 1e-8)
    # Variances in chunks of one test point equal the diagonal of the full covariance.
    tiny = P.gradient_descent_mse_ensemble(net, x, y, learning_rate=lr, memory=1)
    for get in ("ntk", "nngp"):
        full = predict(torch.tensor([t, 3 * t]), xt, get=get, compute_cov=True)
        var = tiny(torch.tensor([t, 3 * t]), xt, get=get, compute_cov="variance")
        close(var.mean, full.mean, 1e-12)
        close(var.covariance, torch.diagonal(full.covariance, dim1=-2, dim2=-1), 1e-9)
    # Infinite time is the converged ensemble of gp_inference.
    mean, cov = predict(None, xt, get="ntk", compute_cov=True)
    ref = P.gp_inference(k, y, get="ntk")(kt, ktt)
    close(mean, ref.mean, 1e-12)
    close(cov, ref.covariance, 1e-12)
    # Training inputs: mean (I - e^{-Theta t/N}) y, covariance E K E.
    e = torch.linalg.matrix_exp(-lr * t * k.ntk / n)
    mean, cov = predict(t, None, get="ntk", compute_cov=True)
    close(mean, y - e @ y, 1e-9)
    close(cov, e @ k.nngp @ e, 1e-9)


def test_max_learning_rate_is_the_stability_edge(data):
    theta, y = data["k"].ntk, data["y"]
    lr = P.max_learning_rate(theta, y.numel())
    top = float(torch.linalg.eigvalsh(theta)[-1])
    close(torch.tensor(lr), torch.tensor(2 * y.numel() / top), 1e-10)
    step = lambda eta: torch.eye(len(theta), dtype=D) - eta * theta / y.numel()  # noqa: E731
    assert float(torch.linalg.eigvals(step(0.99 * lr)).abs().max()) < 1
    assert float(torch.linalg.eigvals(step(1.01 * lr)).abs().max()) > 1
    close(torch.tensor(P.max_learning_rate(theta, y.numel(), momentum=0.9)), torch.tensor(1.9 * lr), 1e-12)


# ---- marginal likelihood and fitting -----------------------------------------------------------

def test_marginal_likelihood_closed_form_three_points():
    k = torch.tensor([[2.0, 0.5, 0.1], [0.5, 1.5, -0.3], [0.1, -0.3, 1.0]], dtype=D)
    y = torch.tensor([[0.3, -1.0], [1.2, 0.4], [-0.7, 0.9]], dtype=D)
    reg = 0.1
    kr = (k + reg * k.diagonal().mean() * torch.eye(3, dtype=D)).numpy()
    expected = sum(multivariate_normal(np.zeros(3), kr).logpdf(y[:, c].numpy()) for c in range(2))
    got = P.marginal_log_likelihood(k, y, reg)
    assert abs(float(got) - expected) < 1e-12 * abs(expected)
    absolute = P.marginal_log_likelihood(k, y[:, 0], 0.05, diag_reg_absolute_scale=True)
    assert abs(float(absolute) - multivariate_normal(np.zeros(3), k.numpy() + 0.05 * np.eye(3)).logpdf(y[:, 0].numpy())) < 1e-12


def _relu_net(W_std, b_std):
    return wn.Serial(wn.Dense(1, W_std, b_std), wn.Relu(), wn.Dense(1, W_std, b_std))


@pytest.fixture(scope="module")
def prior_sample():
    """20 independent functions drawn from the NNGP prior of a known architecture."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(100, 3, generator=g, dtype=D) * (0.2 + 2 * torch.rand(100, 1, generator=g, dtype=D))
    k = _reg(_relu_net(1.5, 0.5).nngp(x), 1e-3)
    y = torch.linalg.cholesky(k) @ torch.randn(100, 20, generator=g, dtype=D)
    return x, y


def test_fit_hyperparameters_recovers_the_generating_prior(prior_sample):
    x, y = prior_sample
    fit = P.fit_hyperparameters(_relu_net, x, y, {"W_std": 1.0, "b_std": 0.2}, diag_reg=1e-2)
    assert fit.method == "gradient" and fit.success
    assert abs(fit.params["W_std"] / 1.5 - 1) < 0.1, fit
    assert abs(fit.params["b_std"] / 0.5 - 1) < 0.1, fit
    assert abs(math.log(fit.diag_reg / 1e-3)) < math.log(2), fit
    # The optimum beats the generating values (it is the maximum of the likelihood).
    truth = P.marginal_log_likelihood(_relu_net(1.5, 0.5).nngp(x), y, 1e-3)
    assert fit.log_likelihood >= float(truth) - 1e-6
    grid = P.fit_hyperparameters(_relu_net, x, y, {"W_std": 1.0, "b_std": 0.2}, diag_reg=1e-3,
                                 fit_diag_reg=False, method="grid",
                                 grid={"W_std": [1.0, 1.25, 1.5, 1.75], "b_std": [0.25, 0.5, 1.0]})
    assert grid.params == {"W_std": 1.5, "b_std": 0.5} and grid.method == "grid"


def test_fit_falls_back_to_the_grid_for_non_differentiable_parameters(prior_sample):
    x, y = prior_sample

    def build(W_std, c):  # Polynomial's coefficients are plain floats: no forward-mode tangent
        return wn.Serial(wn.Dense(1, W_std, 0.1), wn.Polynomial((0.0, 1.0, c)), wn.Dense(1, 1.0, 0.1))

    fit = P.fit_hyperparameters(build, x[:30], y[:30, :3], {"W_std": 1.0, "c": 0.1}, fit_diag_reg=False,
                                grid={"W_std": [1.0, 2.0], "c": [0.01, 0.1]})
    assert fit.method == "grid" and fit.evaluations >= 4
    with pytest.raises(ParameterError, match="method='grid'"):
        P.fit_hyperparameters(build, x[:30], y[:30, :3], {"W_std": 1.0, "c": 0.1}, method="gradient")


# ---- kernels differentiable in their hyperparameters -----------------------------------------

_X = torch.randn(5, 4, generator=torch.Generator().manual_seed(5), dtype=D)
_XS = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(6), dtype=D)
_DIFF = {
    "dense-relu": (lambda p: wn.Serial(wn.Dense(8, p["w"], p["b"]), wn.Relu(), wn.Dense(1, p["w"], p["b"])), {"w": 1.3, "b": 0.2}, _X),
    "standard-erf": (lambda p: wn.Serial(wn.Dense(8, p["w"], p["b"], parameterization="standard"), wn.Erf(p["a"], 0.7, 0.1), wn.Dense(1, p["w"], p["b"], parameterization="standard")), {"w": 1.3, "b": 0.2, "a": 1.1}, _X),
    "abrelu-sin-rbf": (lambda p: wn.Serial(wn.Dense(8, 1.2, 0.1), wn.ABRelu(p["a"], 1.2), wn.Dense(8), wn.Sin(1.0, p["s"], 0.3), wn.Dense(8), wn.Rbf(p["g"]), wn.Dense(1)), {"a": -0.3, "s": 0.8, "g": 0.6}, _X),
    "gelu-tanh-quadrature": (lambda p: wn.Serial(wn.Dense(8, p["w"], 0.1), wn.Gelu(), wn.Dense(8, p["w"]), wn.Tanh(), wn.Dense(1)), {"w": 1.2}, _X),
    "conv-pool": (lambda p: wn.Serial(wn.Conv(8, 3, W_std=p["w"], b_std=p["b"]), wn.Relu(), wn.Conv(8, 3, padding="valid", W_std=p["w"]), wn.GlobalAvgPool(), wn.Dense(1, p["w"])), {"w": 1.3, "b": 0.2}, _XS),
    # Two size-preserving convolutions: the second one's window sums (the flat-offset path)
    # act on tiles that carry tangents.
    "conv-same-stack": (lambda p: wn.Serial(wn.Conv(8, 3, W_std=p["w"], b_std=p["b"]), wn.Relu(), wn.Conv(8, 3, W_std=p["w"]), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)), {"w": 1.3, "b": 0.2}, _XS),
    "layernorm-dropout": (lambda p: wn.Serial(wn.Conv(8, 3, W_std=1.2), wn.LayerNorm(eps=p["e"]), wn.Relu(), wn.Dropout(p["r"]), wn.GlobalAvgPool(), wn.Dense(1)), {"e": 0.3, "r": 0.2}, _XS),
    "attention-decay": (lambda p: wn.Serial(wn.Dense(8, 1.0, 0.1), wn.SelfAttention(8, pos_emb="sum", pos_emb_std=p["s"], pos_emb_p=p["p"], pos_emb_decay=lambda d: torch.exp(-d / 4)), wn.GlobalAvgPool(), wn.Dense(1)), {"s": 0.8, "p": 1.5}, _XS),
    "attention": (lambda p: wn.Serial(wn.Dense(8, 1.0, 0.1), wn.SelfAttention(8, W_query_std=p["q"], W_value_std=p["v"], b_std=0.2, pos_emb="sum"), wn.GlobalAvgPool(), wn.Dense(1)), {"q": 1.1, "v": 0.9}, _XS),
}


@pytest.mark.parametrize("name", list(_DIFF))
def test_forward_mode_derivatives_match_finite_differences(name):
    import torch.autograd.forward_ad as fwAD

    build, p0, x = _DIFF[name]

    def value(p):
        k = build(p).kernel(x)
        return k.nngp.sum() + 0.7 * k.ntk.sum()

    for key in p0:
        with fwAD.dual_level():
            p = {k: torch.tensor(v, dtype=D) for k, v in p0.items()}
            p[key] = fwAD.make_dual(p[key], torch.tensor(1.0, dtype=D))
            tangent = fwAD.unpack_dual(value(p)).tangent
        h = 1e-5
        fd = (value({**p0, key: p0[key] + h}) - value({**p0, key: p0[key] - h})) / (2 * h)
        assert tangent is not None
        assert abs(float(tangent - fd)) <= 1e-7 * abs(float(fd)), (key, float(tangent), float(fd))


@pytest.mark.parametrize("name", list(_DIFF))
def test_reverse_mode_derivatives_equal_forward_mode_ones(name):
    import torch.autograd.forward_ad as fwAD

    build, p0, x = _DIFF[name]

    def value(p):
        k = build(p).kernel(x)
        return k.nngp.sum() + 0.7 * k.ntk.sum()

    p = {k: torch.tensor(v, dtype=D, requires_grad=True) for k, v in p0.items()}
    grads = torch.autograd.grad(value(p), list(p.values()))
    for key, grad in zip(p0, grads):
        with fwAD.dual_level():
            q = {k: torch.tensor(v, dtype=D) for k, v in p0.items()}
            q[key] = fwAD.make_dual(q[key], torch.tensor(1.0, dtype=D))
            tangent = fwAD.unpack_dual(value(q)).tangent
        assert abs(float(grad - tangent)) <= 1e-11 * abs(float(tangent)), (key, float(grad), float(tangent))


# ---- errors -------------------------------------------------------------------------------------

def test_errors_name_the_problem(data):
    k, y = data["k"].nngp, data["y"]
    singular = torch.ones(4, 4, dtype=D)
    with pytest.raises(NumericalError, match=r"4x4 training kernel is not numerically positive definite.*raise diag_reg"):
        P.gp_inference(singular, torch.ones(4))(torch.ones(2, 4))
    bad = k.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(NonFiniteInputError, match="k_train_train must be finite"):
        P.gp_inference(bad, y)
    with pytest.raises(ShapeError, match=r"one row per training point: kernel is 14x14, y_train has shape \(13, 3\)"):
        P.gradient_descent_mse(k, y[:13])
    with pytest.raises(ShapeError, match="one column per training point, 14"):
        P.gp_inference(k, y)(torch.ones(3, 13, dtype=D))
    with pytest.raises(ShapeError, match="must be square"):
        P.marginal_log_likelihood(k[:, :5], y)
    with pytest.raises(ParameterError, match="t must hold times >= 0"):
        P.gradient_descent_mse(k, y)(-1.0)
    with pytest.raises(ParameterError, match="learning_rate must be a finite float > 0"):
        P.gradient_descent_mse(k, y, learning_rate=0.0)
    with pytest.raises(ParameterError, match="diag_reg must be a finite float >= 0"):
        P.gp_inference(k, y, diag_reg=-1.0)
    with pytest.raises(ParameterError, match="t must be finite for the ODE solver"):
        P.gradient_descent(_mse, k, y)(None)
    with pytest.raises(ParameterError, match="loss\\(fx, y\\) must return a scalar tensor"):
        P.gradient_descent(lambda f, yy: f - yy, k, y)(1.0)
    with pytest.raises(ParameterError, match="get must be one of"):
        P.gp_inference(k, y, get="gp")
    with pytest.raises(ShapeError, match=r"k_test_test must be \(6, 6\)"):
        P.gp_inference(k, y)(data["kt"].nngp, torch.ones(5, 5, dtype=D))
