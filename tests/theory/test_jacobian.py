"""Input-output Jacobians (widenet.theory._jacobian). Dynamical isometry: orthogonal and
delta-orthogonal initializations of widenet's finite modules, and Jacobian singular-value
spectra against exact results for deep linear networks and the free-probability moments of
Pennington et al. 2017 for deep tanh networks at criticality; and the Jacobian norm, each
example's input-output sensitivity."""

import math

import pytest
import torch

import widenet as wn
from theory._helpers import _gen
from widenet import theory
from widenet.errors import ParameterError

D = torch.float64


def test_orthogonal_weights_are_scaled_isometries_with_the_gaussian_entry_variance():
    for n_in, n_out in ((64, 64), (96, 48), (32, 80)):
        m = wn.Dense(n_out, W_std=1.3).module(n_in, seed=1, init="orthogonal", dtype=D)
        w = m.weight.detach() * (1.3 / math.sqrt(n_in))  # effective weight, "ntk" parameterization
        s = torch.linalg.svdvals(w)
        torch.testing.assert_close(s, torch.full_like(s, 1.3 * math.sqrt(max(n_in, n_out) / n_in)), rtol=1e-12,
                                   atol=0)
        assert float((w ** 2).sum()) / w.numel() == pytest.approx(1.3 ** 2 / n_in, rel=1e-12)
    std = wn.Dense(40, W_std=2.0, parameterization="standard").module(40, seed=2, init="orthogonal", dtype=D)
    s = torch.linalg.svdvals(std.weight.detach())
    torch.testing.assert_close(s, torch.full_like(s, 2.0), rtol=1e-12, atol=0)
    # Same seed, same weights; a different init, different weights.
    again = wn.Dense(40, W_std=2.0, parameterization="standard").module(40, seed=2, init="orthogonal", dtype=D)
    assert torch.equal(std.weight, again.weight)
    assert not torch.equal(std.weight, wn.Dense(40).module(40, seed=2, dtype=D).weight)


def test_delta_orthogonal_convolutions_preserve_norms_exactly():
    net = wn.Serial(*[wn.Conv(8, 3, padding="circular", W_std=1.0, b_std=None) for _ in range(6)])
    model = net.module((8, 6, 6), seed=0, init="delta_orthogonal", dtype=D)
    x = torch.randn(5, 8, 6, 6, dtype=D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    spec = theory.jacobian_spectrum(model, x[:2])
    torch.testing.assert_close(spec.singular_values, torch.ones_like(spec.singular_values), rtol=1e-10, atol=0)
    assert (model[0].weight[:, :, 0, 0] == 0).all()
    with pytest.raises(ParameterError, match="delta_orthogonal' needs odd kernel sizes"):
        wn.Conv(4, 2).module((4, 6, 6), seed=0, init="delta_orthogonal")
    with pytest.raises(ParameterError, match="init must be one of"):
        wn.Dense(3).module(3, init="uniform")


def test_deep_linear_jacobians_gaussian_spread_and_orthogonal_isometry():
    width, depth = 256, 8
    net = wn.Serial(*[wn.Dense(width, W_std=1.0, b_std=0.0) for _ in range(depth)])
    x = torch.randn(2, width, dtype=D, generator=torch.Generator().manual_seed(0))
    ortho = theory.jacobian_spectrum(net.module(width, seed=0, init="orthogonal", dtype=D), x)
    torch.testing.assert_close(ortho.singular_values, torch.ones_like(ortho.singular_values), rtol=1e-10, atol=0)
    # Products of L square Gaussian matrices: E[s^2] = 1 and E[s^4] = L + 1 (Fuss-Catalan).
    m1, m2 = [], []
    for seed in range(4):
        s2 = theory.jacobian_spectrum(net.module(width, seed=seed, dtype=D), x[:1]).squared
        m1.append(float(s2.mean()))
        m2.append(float((s2 ** 2).mean()))
    assert sum(m1) / 4 == pytest.approx(1.0, rel=0.05)
    assert sum(m2) / 4 == pytest.approx(depth + 1, rel=0.12)


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_tanh_jacobian_moments_at_criticality_follow_free_probability(init):
    width, depth, bias_var = 400, 16, 0.01
    weight_var = float(theory.critical_line(wn.Tanh(), bias_var))
    pred = theory.jacobian_moments(wn.Tanh(), weight_var, bias_var, depth, init=init)
    assert pred.chi == pytest.approx(1.0, abs=1e-9) and pred.mean == pytest.approx(1.0, abs=1e-8)
    block = wn.Serial(wn.Tanh(), wn.Dense(width, math.sqrt(weight_var), math.sqrt(bias_var)))
    net = wn.Serial(*[block] * depth)
    means, variances = [], []
    for seed in range(3):
        x = math.sqrt(pred.q_star) * torch.randn(8, width, dtype=D, generator=torch.Generator().manual_seed(seed))
        spec = theory.jacobian_spectrum(net.module(width, seed=seed, init=init, dtype=D), x)
        means.append(spec.mean)
        variances.append(spec.variance)
    assert sum(means) / 3 == pytest.approx(pred.mean, rel=0.06)
    # Finite width adds O(depth / width) to the spread; the prediction is its large-width limit.
    assert sum(variances) / 3 == pytest.approx(pred.variance, rel=0.15)
    gaussian = theory.jacobian_moments(wn.Tanh(), weight_var, bias_var, depth, init="gaussian")
    orthogonal = theory.jacobian_moments(wn.Tanh(), weight_var, bias_var, depth, init="orthogonal")
    assert orthogonal.variance < gaussian.variance / 5  # dynamical isometry needs orthogonal weights
    # ReLU cannot be isometric: mu2 / mu1^2 = 2 whatever the weights.
    relu = theory.jacobian_moments(wn.Relu(), 2.0, 0.0, depth, init="orthogonal")
    assert relu.variance == pytest.approx(depth * 1.0, rel=1e-12)


def test_jacobian_norm_is_the_input_output_sensitivity():
    lin = torch.nn.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=D, generator=_gen(0))
    torch.testing.assert_close(theory.jacobian_norm(lin, x), torch.linalg.matrix_norm(lin.weight.detach()).expand(4))
    p = torch.softmax(lin(x).detach(), dim=1)
    w = lin.weight.detach()
    expected = torch.stack([torch.linalg.matrix_norm((torch.diag(pi) - torch.outer(pi, pi)) @ w) for pi in p])
    torch.testing.assert_close(theory.jacobian_norm(lin, x, softmax=True), expected)
