"""widenet.predict.ensemble: gradient_descent_mse_ensemble against the dense formulas of Lee et
al. 2019 (matrix exponentials, inverses) and against gp_inference at infinite time."""

import torch

from predict._helpers import close
from widenet import predict as P

D = torch.float64


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
