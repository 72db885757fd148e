"""Taylor models: exact at the initial parameters, the right order away from them, trainable,
and wide networks stay close to their linearization (Lee et al. 2019)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import widenet as wn

D = torch.float64


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 2)).double()


def test_linearization_is_exact_at_the_initial_parameters():
    model, x = _model(), torch.randn(5, 3, dtype=D)
    lin = wn.linearize(model)
    assert torch.equal(lin(x), model(x))
    lin(x).pow(2).sum().backward()
    model(x).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(lin.params[name.replace(".", "__")].grad, p.grad, rtol=1e-12, atol=1e-14)


def test_linearization_is_f0_plus_jacobian_times_displacement():
    model, x = _model(), torch.randn(4, 3, dtype=D)
    lin = wn.linearize(model)
    params = list(model.parameters())
    rows = []
    for i in range(4):
        for c in range(2):
            g = torch.autograd.grad(model(x[i:i + 1])[0, c], params)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    jac = torch.stack(rows)
    delta = 0.1 * torch.randn(jac.shape[1], dtype=D)
    with torch.no_grad():
        start = 0
        for name, p in model.named_parameters():
            lin.params[name.replace(".", "__")].add_(delta[start:start + p.numel()].reshape(p.shape))
            start += p.numel()
        expected = model(x).reshape(-1) + jac @ delta
        assert torch.allclose(lin(x).reshape(-1), expected, rtol=1e-12, atol=1e-12)


def test_taylor_orders():
    """The error of the order-k model at p0 + eps d falls as eps^(k+1)."""
    model, x = _model(), torch.randn(5, 3, dtype=D)
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}

    def error(degree, eps):
        moved = copy.deepcopy(model)
        taylor = wn.taylor_expand(model, degree)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(eps * direction[n])
                taylor.params[n.replace(".", "__")].add_(eps * direction[n])
            return float((taylor(x) - moved(x)).abs().max())

    for degree in (1, 2, 3):
        ratio = error(degree, 0.02) / error(degree, 0.01)
        assert 0.6 * 2 ** (degree + 1) < ratio < 1.6 * 2 ** (degree + 1), (degree, ratio)


@pytest.mark.slow  # a study: 36 networks and their linearizations trained at widths up to 2048
def test_trained_network_approaches_its_trained_linearization_as_width_grows():
    """Same data, same SGD: the gap between the network and its linearization after training
    falls with width (Lee et al. 2019 bound it by O(1/sqrt(width)); smooth activations give
    about 1/width). The log-log slope is fitted over widths 64..2048 and 3 seeds."""
    g = torch.Generator().manual_seed(1)
    x, xt = torch.randn(8, 3, generator=g, dtype=D), torch.randn(4, 3, generator=g, dtype=D)
    y = torch.sin(x[:, :1] * 2)
    widths, logs = [64, 128, 256, 512, 1024, 2048], []
    for width in widths:
        gaps = []
        for seed in range(3):
            net = wn.Serial(wn.Dense(width, 1.5, 0.1), wn.Erf(), wn.Dense(1, 1.5, 0.1))
            model = net.module(3, seed=seed, dtype=D)
            lin = wn.linearize(model)
            for m in (model, lin):
                opt = torch.optim.SGD(m.parameters(), lr=0.5)
                for _ in range(100):
                    opt.zero_grad()
                    ((m(x) - y) ** 2).mean().backward()
                    opt.step()
            with torch.no_grad():
                gaps.append(float((model(xt) - lin(xt)).norm()))
        logs.append(np.log(np.mean(gaps)))
    slope, intercept = np.polyfit(np.log(widths), logs, 1)
    residual = np.array(logs) - (slope * np.log(widths) + intercept)
    se = np.sqrt(residual.var(ddof=2) / np.sum((np.log(widths) - np.log(widths).mean()) ** 2))
    # Measured: slope -0.53 with standard error 0.10 (mean gap 0.038 at width 64, 0.0061 at 2048).
    assert slope + 3 * se < 0 and slope < -0.3, (slope, se)
