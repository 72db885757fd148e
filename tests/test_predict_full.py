"""Full-output kernels (N1, N2, O, O), as ``empirical.ntk(..., outputs="full")`` gives them, in
the predict functions: against dense formulas on the (N O, N O) matrix built entry by entry,
against the shared-kernel path where the kernel is K (x) I, and against a finite network's
linearization actually trained by a torch optimizer."""

import math

import pytest
import torch

import widenet as wn
from widenet import empirical
from widenet import predict as P
from widenet.errors import ShapeError

D = torch.float64


def _random_full(n1, n2, o, g, like=None):
    """A positive-definite joint kernel over (point, output) pairs, cross-output terms included."""
    feats = torch.randn(n1 + n2, o, 3 * (n1 + n2) * o, generator=g, dtype=D)
    joint = torch.einsum("aip,bjp->abij", feats, feats) / feats.shape[-1]
    return joint[:n1, :n1], joint[n1:, :n1], joint[n1:, n1:]


def _dense(k):
    """(N1, N2, O, O) -> (N1 O, N2 O) by explicit loops: row i * O + a, column j * O + b."""
    n1, n2, o, _ = k.shape
    out = torch.empty(n1 * o, n2 * o, dtype=k.dtype)
    for i in range(n1):
        for j in range(n2):
            for a in range(o):
                for b in range(o):
                    out[i * o + a, j * o + b] = k[i, j, a, b]
    return out


@pytest.fixture
def full():
    g = torch.Generator().manual_seed(3)
    n, m, o = 7, 5, 3
    ktt, ktd, kss = _random_full(n, m, o, g)
    y = torch.randn(n, o, generator=g, dtype=D)
    return ktt, ktd, kss, y


def test_gp_inference_full_outputs_matches_the_dense_joint_posterior(full):
    ktt, ktd, kss, y = full
    n, m, o = ktt.shape[0], ktd.shape[0], ktt.shape[2]
    a, c, s = _dense(ktt), _dense(ktd), _dense(kss)
    reg = 0.1 * torch.trace(a) / a.shape[0]
    solve = torch.linalg.solve(a + reg * torch.eye(n * o, dtype=D), torch.cat([y.reshape(-1, 1), c.T], 1))
    mean = (c @ solve[:, :1]).reshape(m, o)
    cov = s - c @ solve[:, 1:]

    predict = P.gp_inference(ktt, y, diag_reg=0.1)
    out = predict(ktd, kss)
    assert out.mean.shape == (m, o) and out.covariance.shape == (m, m, o, o)
    torch.testing.assert_close(out.mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_dense(out.covariance), 0.5 * (cov + cov.T), rtol=1e-9, atol=1e-11)
    # Each test point's (O, O) output covariance alone, in chunks of one point.
    per_point = P.gp_inference(ktt, y, diag_reg=0.1, memory=8 * n * o * 4)(ktd, torch.stack([kss[i, i] for i in range(m)]))
    assert per_point.covariance.shape == (m, o, o)
    for i in range(m):
        torch.testing.assert_close(per_point.covariance[i], out.covariance[i, i], rtol=1e-9, atol=1e-11)
    # The training points: the posterior interpolates.
    train = predict(None, ktt)
    torch.testing.assert_close(train.mean, y)
    assert train.covariance.shape == (n, n, o, o)


def test_full_kernel_of_independent_outputs_equals_the_shared_kernel(full):
    """K[i, j, a, b] = K[i, j] delta_ab: every function gives what the (N, N) kernel gives."""
    ktt, ktd, kss, y = full
    shared_tt, shared_td, shared_ss = ktt[..., 0, 0], ktd[..., 0, 0], kss[..., 0, 0]
    o = y.shape[1]
    eye = torch.eye(o, dtype=D)
    kron = lambda k: k[..., None, None] * eye  # noqa: E731
    a = P.gp_inference(kron(shared_tt), y, 1e-3)(kron(shared_td), kron(shared_ss))
    b = P.gp_inference(shared_tt, y, 1e-3)(shared_td, shared_ss)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.covariance, kron(b.covariance), rtol=1e-9, atol=1e-11)
    t = torch.tensor([0.5, 3.0, math.inf])
    fa = P.gradient_descent_mse(kron(shared_tt), y, learning_rate=0.7)(t, kron(shared_td), fx_train_0=0.1 * y)
    fb = P.gradient_descent_mse(shared_tt, y, learning_rate=0.7)(t, shared_td, fx_train_0=0.1 * y)
    for u, v in zip(fa, fb):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)
    la = P.marginal_log_likelihood(kron(shared_tt), y, 1e-2)
    lb = P.marginal_log_likelihood(shared_tt, y, 1e-2)
    torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)
    # The stability edge: both normalize the loss by y.numel().
    assert P.max_learning_rate(kron(shared_tt)) == pytest.approx(P.max_learning_rate(shared_tt, y.numel()), rel=1e-12)


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


def test_linearized_network_trained_by_sgd_follows_its_full_empirical_ntk():
    """The physical oracle: a finite network's linearization trained by full-batch gradient
    descent with a small step follows gradient_descent_mse on its full empirical NTK, cross-output
    terms included (they are not zero at finite width)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(D)
    x = torch.randn(6, 3, dtype=D)
    xt = torch.randn(4, 3, dtype=D)
    y = torch.randn(6, 2, dtype=D)
    theta = empirical.ntk(model, x, outputs="full")
    theta_td = empirical.ntk(model, xt, x, outputs="full")
    cross = theta[..., 0, 1].abs().max() / theta[..., 0, 0].abs().max()
    assert cross > 1e-2  # the cross-output terms matter in this check
    lin = wn.linearize(model)
    with torch.no_grad():
        f0, g0 = lin(x), lin(xt)
    lr, steps = 0.02, 500
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (((lin(x) - y) ** 2).sum() / (2 * y.numel())).backward()
        opt.step()
    with torch.no_grad():
        trained, trained_test = lin(x), lin(xt)
    pred, pred_test = P.gradient_descent_mse(theta, y, learning_rate=lr)(steps, theta_td, fx_train_0=f0,
                                                                         fx_test_0=g0)
    # Gradient descent with a step lr against gradient flow: they differ by O(lr * lambda_max / size).
    step_error = lr * float(torch.linalg.eigvalsh(theta.permute(0, 2, 1, 3).reshape(12, 12))[-1]) / y.numel()
    assert step_error < 0.05
    scale = (trained - f0).abs().max()
    assert (pred - trained).abs().max() < 0.1 * scale
    assert (pred_test - trained_test).abs().max() < 0.1 * (trained_test - g0).abs().max()
    # The shared (mean) kernel ignores the cross-output terms and is visibly worse.
    mean_pred = P.gradient_descent_mse(theta.diagonal(dim1=2, dim2=3).mean(-1), y, learning_rate=lr)(steps, fx_train_0=f0)
    assert (mean_pred - trained).abs().max() > 2 * (pred - trained).abs().max()


def test_full_output_shapes_are_checked(full):
    ktt, ktd, kss, y = full
    n, m, o = ktt.shape[0], ktd.shape[0], ktt.shape[2]
    with pytest.raises(ShapeError, match=rf"y_train must have shape \({n}, {o}\)"):
        P.gp_inference(ktt, y[:, :2])
    with pytest.raises(ShapeError, match="full-output kernel with 3 outputs, so k_test_train must be one too"):
        P.gp_inference(ktt, y)(ktd[..., 0, 0])
    with pytest.raises(ShapeError, match="one column per training point"):
        P.gp_inference(ktt, y)(ktd[:, :3])
    with pytest.raises(ShapeError, match=r"k_test_test must be \(5, 5, 3, 3\)"):
        P.gp_inference(ktt, y)(ktd, kss[..., 0, 0])
    with pytest.raises(ShapeError, match=r"\(N, N, O, O\)"):
        P.gp_inference(ktt[..., :2], y)
    with pytest.raises(ShapeError, match="full-output kernel"):
        P.gp_inference(ktt[..., 0, 0], y)(ktd)
    with pytest.raises(ShapeError, match="full-output kernel with 3 outputs"):
        P.gradient_descent_mse(ktt, y)(1.0, ktd[..., :2, :2])
