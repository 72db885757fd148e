"""widenet.predict.dynamics: gradient_descent_mse, gradient_descent (the ODE solver) and
max_learning_rate against independent dense computations (matrix exponentials of the linear
ODEs, solves), a linear model trained by torch.optim.SGD, and full-output kernels against the
dense (N O, N O) matrix."""

import math

import pytest
import torch

from predict._helpers import _dense, _mse, _reg, close
from widenet import predict as P

D = torch.float64


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


def test_gradient_descent_mse_full_outputs_matches_the_matrix_exponential(full):
    ktt, ktd, _, y = full
    n, m, o = ktt.shape[0], ktd.shape[0], ktt.shape[2]
    a, c = _dense(ktt), _dense(ktd)
    lr, t = 0.3, 4.0
    f0 = 0.2 * torch.randn(n, o, generator=torch.Generator().manual_seed(0), dtype=D)
    size = n * o
    decay = torch.linalg.matrix_exp(-lr * t * a / size)
    train = y.reshape(-1, 1) + decay @ (f0 - y).reshape(-1, 1)
    # d g / dt = -lr C (f - y) / size, integrated: g(t) = -C A^-1 (I - decay) (f0 - y).
    test = -c @ torch.linalg.solve(a, (torch.eye(size, dtype=D) - decay) @ (f0 - y).reshape(-1, 1))
    out_train, out_test = P.gradient_descent_mse(ktt, y, learning_rate=lr)(t, ktd, fx_train_0=f0)
    torch.testing.assert_close(out_train, train.reshape(n, o), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(out_test, test.reshape(m, o), rtol=1e-8, atol=1e-10)
    # The ODE integrator on the MSE agrees with the closed form.
    mse = lambda f, y: ((f - y) ** 2).sum() / (2 * y.numel())  # noqa: E731
    ode_train, ode_test = P.gradient_descent(mse, ktt, y, learning_rate=lr)(t, ktd, fx_train_0=f0)
    torch.testing.assert_close(ode_train, out_train, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ode_test, out_test, rtol=1e-7, atol=1e-9)


# ---- gradient_descent (ODE) -----------------------------------------------------------------

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


# ---- max_learning_rate ----------------------------------------------------------------------

def test_max_learning_rate_is_the_stability_edge(data):
    theta, y = data["k"].ntk, data["y"]
    lr = P.max_learning_rate(theta, y.numel())
    top = float(torch.linalg.eigvalsh(theta)[-1])
    close(torch.tensor(lr), torch.tensor(2 * y.numel() / top), 1e-10)
    step = lambda eta: torch.eye(len(theta), dtype=D) - eta * theta / y.numel()  # noqa: E731
    assert float(torch.linalg.eigvals(step(0.99 * lr)).abs().max()) < 1
    assert float(torch.linalg.eigvals(step(1.01 * lr)).abs().max()) > 1
    close(torch.tensor(P.max_learning_rate(theta, y.numel(), momentum=0.9)), torch.tensor(1.9 * lr), 1e-12)
