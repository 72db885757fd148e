"""Exact posteriors of finite Bayesian networks (widenet.theory._posterior) against the NNGP
posterior (Hron et al. 2020), and the Wasserstein distance they are measured with."""

import math

import numpy as np
import pytest
import torch

import widenet as wn
from widenet import theory

D = torch.float64


def test_exact_posterior_of_a_bayesian_linear_model_is_the_gp_posterior():
    x = torch.tensor([[-1.0, 0.5], [0.3, -0.2], [1.2, 1.0]], dtype=D)
    y = torch.tensor([-0.6, 0.4, 0.9], dtype=D)
    xt = torch.tensor([[-0.3, 0.1], [0.8, -1.0]], dtype=D)
    study = theory.exact_posterior(lambda n: wn.Dense(1, W_std=1.2, b_std=0.3), x, y, xt, widths=[1, 2, 3],
                                   noise_var=0.1, samples=200_000)
    # A Gaussian prior at any width: every gap is Monte Carlo noise.
    a = study.accepted.double()
    assert torch.all(a > 5000)
    sd = study.gp_variance.sqrt()
    z = (study.mean - study.gp_mean) / (sd / a.sqrt()[:, None])
    assert float(z.abs().max()) < 4.5
    assert float(study.gaps["variance_gap"].max()) < 6 * math.sqrt(2 / float(a.min()))
    assert float(study.gaps["wasserstein"].max()) < 4 * study.floor["wasserstein"]


def test_exact_posteriors_of_erf_networks_approach_the_nngp_posterior():
    x = torch.tensor([[-1.0], [0.3], [1.2]], dtype=D)
    y = torch.tensor([-0.6, 0.4, 0.9], dtype=D)
    xt = torch.tensor([[-0.3], [0.8], [2.0]], dtype=D)
    arch = lambda n: wn.Serial(wn.Dense(n, W_std=1.5, b_std=0.5), wn.Erf(), wn.Dense(1, W_std=1.5, b_std=0.2))
    study = theory.exact_posterior(arch, x, y, xt, widths=[1, 2, 4, 8, 16], noise_var=0.05, samples=300_000)
    for name in ("mean_gap", "variance_gap", "wasserstein"):
        slope, err = study.slope(name)
        assert slope + 3 * err < 0, (name, slope, err)
        assert float(study.gaps[name][-1]) < float(study.gaps[name][0])


def test_wasserstein_to_gaussian_is_exact():
    from scipy import integrate, stats

    s = np.random.default_rng(0).normal(0.3, 1.2, 40)
    xs = np.sort(s)

    def gap(t):
        return abs(np.searchsorted(xs, t, side="right") / len(xs) - stats.norm.cdf(t, 0.1, 0.9))

    quad = integrate.quad(gap, -15, 15, points=list(xs), limit=500)[0]
    assert theory.wasserstein_to_gaussian(s, 0.1, 0.9) == pytest.approx(quad, rel=1e-8)
    assert theory.wasserstein_to_gaussian([0.0], 0.0, 1.0) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-12)
