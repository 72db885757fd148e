"""Predictions of infinitely wide networks against finite networks actually trained by
gradient descent (Lee et al. 2019, arXiv 1902.06720, figures 1 and 5; REFERENCE.md oracle 5),
and gradient_descent_mse on a finite network's full empirical NTK against the network's
linearization trained by a torch optimizer."""

import math

import torch
from torch.func import functional_call, grad, stack_module_state, vmap

import widenet as wn
from widenet import empirical
from widenet import predict as P

D = torch.float64


def _data(seed, n=8, m=4, d=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
    xt = torch.randn(m, d, generator=g, dtype=D)
    y = torch.sin(2 * x[:, :1]) + 0.3 * x[:, 1:2]
    return x, xt, y


def _mse(out, y):
    return ((out - y) ** 2).sum() / (2 * y.numel())


def _empirical_ntk(model, x):
    """J J^T over all parameters, one autograd pass per input (the plain reference)."""
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        model(x[i:i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    jac = torch.stack(rows)
    return jac @ jac.T


def test_wide_network_follows_gradient_descent_mse():
    """A width-8192 ReLU network trained by full-batch gradient descent with a small step
    follows the closed-form dynamics from its own initial outputs: to 1% with its own
    (empirical) NTK (measured 0.5-0.9%), the linearization being exact at infinite width; to
    a few percent with the infinite-width NTK (measured 3%), within twice the relative gap
    between the finite network's kernel and the limit (4.5%: the O(1/sqrt(width))
    fluctuation of ReLU features), which bounds the gap in outputs."""
    x, xt, y = _data(0)
    n = len(x)
    net = wn.Serial(wn.Dense(8192, 1.5, 0.1), wn.Relu(), wn.Dense(1, 1.5, 0.1))
    xa = torch.cat([x, xt])
    k = net.kernel(xa).ntk
    model = net.module(3, seed=1, dtype=D)
    emp = _empirical_ntk(model, xa)
    kernel_gap = float((emp - k).norm() / k.norm())
    with torch.no_grad():
        f0, g0 = model(x), model(xt)
    # A step 1/200 of the largest stable one keeps the O(step) gap of discrete steps to the
    # gradient flow below 0.3%.
    lr = 0.005 * P.max_learning_rate(k[:n, :n], y.numel())
    analytic = P.gradient_descent_mse(k[:n, :n], y, learning_rate=lr)
    empirical = P.gradient_descent_mse(emp[:n, :n], y, learning_rate=lr)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(4001):
        if step in (200, 1000, 4000):
            with torch.no_grad():
                train, test = model(x), model(xt)
            for predict, kernel, tol in ((empirical, emp, 1e-2), (analytic, k, max(2 * kernel_gap, 1e-2))):
                ref_train, ref_test = predict(float(step), kernel[n:, :n], f0, g0)
                ours, ref = torch.cat([train, test]), torch.cat([ref_train, ref_test])
                assert float((ours - ref).norm() / ref.norm()) < tol, (step, tol)
            assert float((train - f0).norm() / (ref_train - f0).norm()) > 0.9  # it moved as predicted
        opt.zero_grad()
        _mse(model(x), y).backward()
        opt.step()
    assert kernel_gap < 0.05  # O(1/sqrt(8192)) with the constant of ReLU features
    assert float((train - y).norm()) < 0.5 * float((f0 - y).norm())  # and it learned


def test_ensemble_of_width_128_networks_matches_the_ensemble_prediction():
    """1024 width-128 networks trained in parallel (torch.func.vmap); the mean and covariance
    of their test outputs match gradient_descent_mse_ensemble (NT's tolerance: 0.08)."""
    x, xt, y = _data(2, n=6, m=4)
    net = wn.Serial(wn.Dense(128, 1.5, 0.2), wn.Relu(), wn.Dense(1, 1.5, 0.2))
    models = [net.module(3, seed=s, dtype=D) for s in range(1024)]
    params, buffers = stack_module_state(models)
    params = {name: value.detach() for name, value in params.items()}
    base = models[0]

    def loss(p, b):
        return _mse(functional_call(base, (p, b), (x,)), y)

    step_grad = vmap(grad(loss), in_dims=(0, 0))
    k = net.kernel(x)
    lr = 0.2 * P.max_learning_rate(k.ntk, y.numel())
    steps = 120
    for _ in range(steps):
        g = step_grad(params, buffers)
        params = {name: value - lr * g[name] for name, value in params.items()}
    outputs = vmap(lambda p, b: functional_call(base, (p, b), (xt,)), in_dims=(0, 0))(params, buffers)[..., 0]
    mean, cov = P.gradient_descent_mse_ensemble(net, x, y, learning_rate=lr)(float(steps), xt, get="ntk",
                                                                              compute_cov=True)
    emp_mean = outputs.mean(0)
    emp_cov = torch.cov(outputs.T)
    scale = cov.diagonal().sqrt().max()
    assert float((emp_mean - mean[:, 0]).abs().max() / scale) < 0.08
    assert float((emp_cov - cov).norm() / cov.norm()) < 0.08
    # Not trivially satisfied: before training the ensemble was different.
    before = P.gradient_descent_mse_ensemble(net, x, y, learning_rate=lr)(0.0, xt, get="ntk")
    assert float((before[:, 0] - mean[:, 0]).abs().max() / scale) > 0.5


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
