"""Learning-rate phases (widenet.theory._phases): the catapult phases of the two-layer linear
network against its exact (f, lambda) recursion (Lewkowycz et al. 2020), learning-rate sweeps,
and the errors of the training-dynamics functions."""

import math

import numpy as np
import pytest
import torch

import widenet as wn
from theory._helpers import _arch, _gen
from widenet import theory
from widenet.errors import NonFiniteInputError, ParameterError, ShapeError

D = torch.float64


def _uv(width, seed=0):
    """Lewkowycz et al.'s two-layer linear network f = v^T u x / sqrt(n), on x = 1, y = 0."""
    net = wn.Serial(wn.Dense(width, W_std=1.0, b_std=None), wn.Dense(1, W_std=1.0, b_std=None))
    return net.module(1, seed=seed, dtype=D), torch.ones(1, 1, dtype=D), torch.zeros(1, 1, dtype=D)


def _recursion(f0, lam0, eta, n, steps):
    """The paper's exact recursion: f' = (1 - eta lam + eta^2 f^2 / n) f,
    lam' = lam + (eta f^2 / n)(eta lam - 4)."""
    f, lam, losses = f0, lam0, []
    for _ in range(steps):
        losses.append(0.5 * f * f)
        f, lam = (1 - eta * lam + eta ** 2 * f * f / n) * f, lam + (eta * f * f / n) * (eta * lam - 4)
    return np.array(losses), lam


def test_catapult_phases_of_the_two_layer_linear_network():
    n = 512
    model, x, y = _uv(n)
    u, v = model[0].weight.detach().ravel(), model[1].weight.detach().ravel()
    f0 = float(v @ u) / math.sqrt(n)
    lam0 = float(u @ u + v @ v) / n  # the NTK in closed form
    th = theory.learning_rate_thresholds(model, x)
    assert th.lambda0 == pytest.approx(lam0, rel=1e-12)
    assert (th.critical, th.maximal) == (pytest.approx(2 / lam0), pytest.approx(4 / lam0))

    lazy = theory.catapult_probe(model, x, y, 1.5 / lam0, steps=200)
    assert lazy.phase == "lazy" and lazy.ratio == pytest.approx(1.5)
    loss = lazy.loss.numpy()
    assert np.all(np.diff(loss) <= 1e-15 * loss[0]) and loss[-1] < 1e-20 * loss[0]  # monotone, converged
    assert abs(lazy.final_curvature - lam0) < 5.0 / n  # the kernel moved by O(1/n)

    cat = theory.catapult_probe(model, x, y, 3.0 / lam0, steps=300, curvature_every=10)
    assert cat.phase == "catapult"
    assert cat.peak_loss > 50 * cat.loss[0] and cat.final_loss < 1e-12 * float(cat.loss[0])  # spike, then convergence
    assert cat.final_curvature < 2 / cat.learning_rate < lam0  # ends flatter than 2 / eta
    # The trained network follows the paper's exact (f, lambda) recursion step by step.
    ref, lam_ref = _recursion(f0, lam0, cat.learning_rate, n, 300)
    np.testing.assert_allclose(cat.loss.numpy()[:300], ref, rtol=1e-7, atol=1e-14 * ref[0])
    assert cat.final_curvature == pytest.approx(lam_ref, rel=1e-6)

    div = theory.catapult_probe(model, x, y, 4.5 / lam0, steps=300)
    assert div.phase == "divergent" and not math.isfinite(div.final_loss)
    # The model itself was not trained.
    assert torch.equal(model[0].weight.detach().ravel(), u)


def test_learning_rate_sweep_finds_four_for_the_linear_network_and_more_for_relu():
    model, x, y = _uv(512)
    sweep = theory.learning_rate_sweep(model, x, y, [1.0, 1.5, 2.5, 3.0, 3.5, 4.5, 5.0], steps=300, refine=5)
    assert sweep.phases[:2] == ("lazy", "lazy") and sweep.critical_ratio == 2.5
    assert sweep.divergent_ratio - sweep.max_ratio <= 1.0 / 2 ** 5 + 1e-12
    assert 3.85 < sweep.max_ratio < 4.0 <= sweep.divergent_ratio < 4.1
    assert sweep.max_learning_rate == pytest.approx(sweep.max_ratio / sweep.lambda0)
    # A deeper ReLU network survives larger rates than 4 / lambda_0 (Lewkowycz et al. 2020).
    relu = wn.Serial(wn.Dense(512, W_std=math.sqrt(2), b_std=0.0), wn.Relu(),
                     wn.Dense(512, W_std=math.sqrt(2), b_std=0.0), wn.Relu(), wn.Dense(1, W_std=1.0, b_std=0.0))
    xr = torch.randn(16, 10, dtype=D, generator=_gen(0))
    sweep_relu = theory.learning_rate_sweep(relu.module(10, seed=0, dtype=D), xr, torch.sign(xr[:, :1]),
                                            [1.0, 3.0, 6.0, 8.0, 14.0], steps=300, refine=0)
    assert sweep_relu.phases == ("lazy", "catapult", "catapult", "catapult", "divergent")
    assert sweep_relu.max_ratio == 8.0


def test_bad_inputs_are_named():
    model, x, y = _uv(8)
    with pytest.raises(ParameterError, match="k must be <= the operator's size 1"):
        theory.ntk_eigenpairs(model, x, 2)
    with pytest.raises(ParameterError, match="which must be one of"):
        theory.ntk_eigenpairs(model, x, 1, which="top")
    with pytest.raises(ShapeError, match="share a dtype"):
        theory.ntk_eigenpairs(model, x.float())
    with pytest.raises(ParameterError, match="learning_rate must be a finite float > 0"):
        theory.catapult_probe(model, x, y, 0.0)
    with pytest.raises(NonFiniteInputError, match="y must be finite"):
        theory.catapult_probe(model, x, torch.full((1, 1), math.nan, dtype=D), 0.1)
    with pytest.raises(ShapeError, match="y must hold the model's outputs' shape"):
        theory.catapult_probe(model, x, torch.zeros(2, 1, dtype=D), 0.1)
    with pytest.raises(ParameterError, match="ratios must be positive"):
        theory.learning_rate_sweep(model, x, y, [1.0, -2.0])
    with pytest.raises(ParameterError, match="loss must be a callable"):
        theory.hessian_eigenpairs(model, "mse", x, y)
    with pytest.raises(ParameterError, match="at least three distinct widths"):
        theory.finite_width_study(_arch, x, y, widths=[8, 16])
    with pytest.raises(ParameterError, match="learning_rate must be below the critical"):
        theory.finite_width_study(_arch, torch.randn(4, 1, dtype=D), torch.zeros(4, dtype=D), widths=[8, 16, 32],
                                  learning_rate=100.0)
    attention = lambda n: wn.Serial(wn.SelfAttention(n, heads=1, key_features=4, value_features=4), wn.Flatten(),
                                    wn.Dense(1))
    with pytest.raises(ParameterError, match="only architectures whose parameters belong to Dense and Conv"):
        theory.exact_posterior(attention, torch.randn(2, 3, 4, dtype=D), torch.zeros(2, dtype=D),
                               torch.randn(1, 3, 4, dtype=D), widths=[1, 2, 3], samples=10)
