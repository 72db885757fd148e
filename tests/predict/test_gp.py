"""widenet.predict.gp: gp_inference and marginal_log_likelihood against independent dense
computations (torch.linalg solves and inverses, scipy's multivariate normal), with one output
per kernel and with full-output kernels (N1, N2, O, O) against the dense joint posterior."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from predict._helpers import _dense, _reg, close
from widenet import predict as P
from widenet.errors import ParameterError

D = torch.float64


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


# ---- marginal likelihood -----------------------------------------------------------------------

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
