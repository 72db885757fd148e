"""Random-feature sketches (``widenet.features``): Phi Phi^T converges to the exact kernels at
the Monte Carlo rate, is unbiased, is one feature map per seed whatever the batch, and
ridge regression on features is kernel ridge regression with the kernel Phi Phi^T."""

import math

import numpy as np
import pytest
import torch

import widenet as wn
from widenet.errors import LayerOrderError, NonFiniteInputError, NumericalError, ParameterError, ShapeError

D = torch.float64


def _inputs(n=48, d=6, seed=0):
    """Inputs on the sphere of radius sqrt(d): every diagonal entry of the kernel alike, so that
    the largest entry error is a maximum over many entries, not one entry's luck."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=D)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(d)


def _mlp(act, hidden, parameterization, b_std, width=100):
    layers = []
    for _ in range(hidden):
        layers += [wn.Dense(width, 1.5, b_std, parameterization), act]
    return wn.Serial(*layers, wn.Dense(1, 1.5, b_std, parameterization))


def _rel(approx, exact):
    return float((approx - exact).abs().max() / exact.abs().max())


def _errors(net, x, kernel, m, seed):
    phi = wn.features(net, x, m, get=("nngp", "ntk"), seed=seed)
    return _rel(phi.nngp @ phi.nngp.T, kernel.nngp), _rel(phi.ntk @ phi.ntk.T, kernel.ntk)


MLPS = {
    "relu-ntk-bias-2": (wn.Relu(), 2, "ntk", 0.1),
    "relu-standard-nobias-3": (wn.Relu(), 3, "standard", None),
    "erf-ntk-nobias-2": (wn.Erf(), 2, "ntk", None),
    "erf-standard-bias-3": (wn.Erf(), 3, "standard", 0.2),
}


@pytest.mark.parametrize("name", MLPS)
def test_error_is_small_and_shrinks_as_one_over_sqrt_n_features(name):
    net, x = _mlp(*MLPS[name]), _inputs()
    k = net.kernel(x)
    # Each entry's standard deviation goes as 1/sqrt(m): 4x the features halves the error.
    # Averaged over 8 seeds, the factor stays above 1.4 (its 1% quantile is above 1.5 for
    # these networks; one seed's factor often falls near 1.2).
    small = np.mean([_errors(net, x, k, 512, s) for s in range(8)], axis=0)
    large = np.mean([_errors(net, x, k, 2048, s) for s in range(8)], axis=0)
    assert (small / large >= 1.4).all(), (small, large)
    # At 8192 features: a few standard deviations of the largest entry error, well below the
    # errors at 512 (and far below any wrong rule, e.g. a missing bias term or width factor).
    nngp_err, ntk_err = _errors(net, x, k, 8192, 0)
    assert nngp_err < 0.15 and ntk_err < 0.15, (nngp_err, ntk_err)
    assert max(nngp_err, ntk_err) < 0.6 * small.min()


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("b_std", [0.3, 0.0, None])
def test_dense_only_networks_are_exact(parameterization, b_std):
    # No nonlinearity, no randomness: the Dense rules themselves (bias entries, W_std, and the
    # input widths n_in of the standard parameterization, 6 then 40 then 7).
    net = wn.Serial(wn.Dense(40, 1.3, b_std, parameterization), wn.Dense(7, 0.8, b_std, parameterization),
                    wn.Dense(3, 1.1, b_std, parameterization))
    x = torch.randn(11, 6, generator=torch.Generator().manual_seed(1), dtype=D)
    k = net.kernel(x)
    phi = wn.features(net, x, 16, get=("nngp", "ntk"))
    bias = b_std is not None
    assert phi.nngp.shape == (11, 6 + 3 * bias)
    assert phi.ntk.shape == (11, 3 * 6 + 6 * bias)  # (6+b) + (6+2b) + (6+3b) columns
    torch.testing.assert_close(phi.nngp @ phi.nngp.T, k.nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(phi.ntk @ phi.ntk.T, k.ntk, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layers", [
    (wn.Dense(64, 1.2, 0.1), wn.Relu(), wn.Erf(), wn.Dense(1)),  # a run of nonlinearities: a Chain
    (wn.Dense(64, 1.4), wn.Gelu(), wn.Dense(64, 1.1, None), wn.Tanh()),  # ends with a nonlinearity
    (wn.Identity(), wn.Repeat(wn.Serial(wn.Dense(64, 1.4, 0.2), wn.Relu()), 2), wn.Dense(2)),
], ids=["relu-erf-chain", "gelu-tanh-end", "repeat"])
def test_other_supported_networks_match_their_kernels(layers):
    net, x = wn.Serial(*layers), _inputs(24, 5, seed=2)
    k = net.kernel(x)
    nngp_err, ntk_err = _errors(net, x, k, 4096, 0)
    assert nngp_err < 0.15 and ntk_err < 0.15, (nngp_err, ntk_err)


def test_output_dimension_is_as_documented():
    x = torch.randn(5, 10)
    net = wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(1))  # default b_std=0.0: a bias
    assert wn.features(net, x, 100).shape == (5, 201)
    assert wn.features(net, x, 100, get="nngp").shape == (5, 101)
    no_bias = wn.Serial(wn.Dense(512, b_std=None), wn.Relu(), wn.Dense(1, b_std=None))
    assert wn.features(no_bias, x, 100).shape == (5, 200)
    assert wn.features(no_bias, x, 100, get="nngp").shape == (5, 100)
    ends = wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(512, parameterization="standard"), wn.Erf())
    assert wn.features(ends, x, 37).shape == (5, 37)
    assert wn.features(ends, x, 37, get="nngp").shape == (5, 37)
    assert wn.features(net, x[:0], 100).shape == (0, 201)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_feature_map_per_seed_whatever_the_batch(dtype):
    net = wn.Serial(wn.Dense(64, 1.4, 0.1), wn.Erf(), wn.Dense(64, 1.2, None, "standard"), wn.Relu(), wn.Dense(1))
    gen = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(50, 7, generator=gen, dtype=dtype), torch.randn(83, 7, generator=gen, dtype=dtype)
    both = wn.features(net, torch.cat([x1, x2]), 300, get=("nngp", "ntk"), seed=5)
    one = wn.features(net, x1, 300, get=("nngp", "ntk"), seed=5)
    two = wn.features(net, x2, 300, get=("nngp", "ntk"), seed=5)
    single = wn.features(net, x2[17:18], 300, get=("nngp", "ntk"), seed=5)
    for name in ("nngp", "ntk"):
        assert torch.equal(getattr(one, name), getattr(both, name)[:50])  # bit for bit
        assert torch.equal(getattr(two, name), getattr(both, name)[50:])
        assert torch.equal(getattr(single, name), getattr(both, name)[67:68])
    # get="ntk" alone is the same map as the pair; another seed is another map.
    assert torch.equal(wn.features(net, x1, 300, seed=5), one.ntk)
    other = wn.features(net, x1, 300, seed=6)
    assert other.shape == one.ntk.shape and (other - one.ntk).abs().max() > 0.01


def test_float32_and_float64_are_the_same_map():
    net = wn.Serial(wn.Dense(64, 1.4, 0.1), wn.Relu(), wn.Dense(64), wn.Erf(), wn.Dense(1))
    x = _inputs(20, 5)
    phi64 = wn.features(net, x, 512, seed=1)
    phi32 = wn.features(net, x.float(), 512, seed=1)
    assert phi32.dtype == torch.float32
    assert torch.equal(wn.features(net, x.float(), 512, seed=1, dtype=torch.float64),
                       wn.features(net, x.float().double(), 512, seed=1))
    torch.testing.assert_close(phi32.double() @ phi32.double().T, phi64 @ phi64.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hidden", [1, 2])
def test_the_mean_over_seeds_is_much_closer_than_one_seed(hidden):
    # One hidden layer: exactly unbiased; two: a bias of order 1/m, well below the noise.
    net, x = _mlp(wn.Relu(), hidden, "ntk", 0.1), _inputs(24, 5, seed=4)
    k = net.kernel(x)
    m, seeds = 128, 20
    maps = [wn.features(net, x, m, get=("nngp", "ntk"), seed=s) for s in range(seeds)]
    for name in ("nngp", "ntk"):
        grams = [getattr(p, name) @ getattr(p, name).T for p in maps]
        singles = [_rel(g, getattr(k, name)) for g in grams]
        mean = _rel(torch.stack(grams).mean(0), getattr(k, name))
        # Averaging 20 independent maps divides the noise by sqrt(20) ~ 4.5.
        assert mean < 0.45 * float(np.median(singles)), (name, mean, singles)


def _kernel_ridge(phi_train, y, phi_test, diag_reg):
    k = phi_train @ phi_train.T
    lam = diag_reg * k.diagonal().mean()
    return phi_test @ phi_train.T @ torch.linalg.solve(k + lam * torch.eye(len(k), dtype=k.dtype), y)


@pytest.mark.parametrize("n_train", [300, 40], ids=["feature-space", "input-space"])
@pytest.mark.parametrize("targets", [1, 3], ids=["vector", "matrix"])
def test_feature_ridge_is_kernel_ridge_regression_with_the_kernel_phi_phi_t(n_train, targets):
    net = wn.Serial(wn.Dense(64, 1.3, 0.1), wn.Relu(), wn.Dense(1))
    gen = torch.Generator().manual_seed(7)
    x_train, x_test = torch.randn(n_train, 4, generator=gen, dtype=D), torch.randn(25, 4, generator=gen, dtype=D)
    phi_train, phi_test = wn.features(net, x_train, 50), wn.features(net, x_test, 50)  # D = 101
    y = torch.randn(n_train, targets, generator=gen, dtype=D)
    y = y[:, 0] if targets == 1 else y
    pred = wn.feature_ridge(phi_train, y, phi_test, diag_reg=1e-3)
    assert pred.shape == ((25,) if targets == 1 else (25, targets))
    want = _kernel_ridge(phi_train, y if targets > 1 else y[:, None], phi_test, 1e-3)
    torch.testing.assert_close(pred, want[:, 0] if targets == 1 else want, rtol=1e-8, atol=1e-8)


def test_feature_ridge_approaches_the_exact_kernel_regression():
    net = wn.Serial(wn.Dense(64, 1.3, 0.1), wn.Erf(), wn.Dense(1))
    gen = torch.Generator().manual_seed(8)
    x_train, x_test = torch.randn(60, 3, generator=gen, dtype=D), torch.randn(20, 3, generator=gen, dtype=D)
    y = torch.sin(x_train[:, 0])
    k_train, k_test = net.kernel(x_train), net.kernel(x_test, x_train)
    lam = 1e-2 * k_train.ntk.diagonal().mean()
    exact = k_test.ntk @ torch.linalg.solve(k_train.ntk + lam * torch.eye(60, dtype=D), y)
    errs = [float((wn.feature_ridge(wn.features(net, x_train, m), y, wn.features(net, x_test, m), 1e-2)
                   - exact).abs().max()) for m in (256, 4096)]
    assert errs[1] < 0.5 * errs[0] and errs[1] < 0.1 * float(exact.abs().max()), errs


NET = wn.Serial(wn.Dense(32), wn.Relu(), wn.Dense(1))
X = torch.randn(4, 3, dtype=D)


@pytest.mark.parametrize("call, error, match", [
    (lambda: wn.features(NET, X, 0), ParameterError, r"features: n_features must be an integer >= 1 \(got 0\)"),
    (lambda: wn.features(NET, X, 64.0), ParameterError, r"features: n_features must be an integer >= 1 \(got 64.0\)"),
    (lambda: wn.features(NET, X, 64, get="foo"), ParameterError, r"features: get must be one of 'nngp', 'ntk' \(got 'foo'\)"),
    (lambda: wn.features(NET, X, 64, seed=-1), ParameterError, r"features: seed must be an integer >= 0 \(got -1\)"),
    (lambda: wn.features(NET, X, 64, dtype=torch.float16), ParameterError,
     r"features: dtype must be torch.float32, torch.float64 or None \(got torch.float16\)"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)), X, 64),
     ParameterError, r"features: net must be a Serial network of Dense layers and elementwise nonlinearities "
                     r"\(got Conv\(.*\)\); .* net\.kernel\(x1, x2\), or in tiles with widenet\.blocked\.compute"),
    (lambda: wn.features(wn.Serial(wn.Dense(8), wn.LayerNorm()), X, 64), ParameterError, r"\(got LayerNorm\(.*\)\)"),
    (lambda: wn.features(wn.Serial(wn.Relu(), wn.Dense(1)), X, 64), LayerOrderError,
     r"features: Relu\(\) needs a Gaussian input, the output of a Dense layer"),
    (lambda: wn.features(NET, torch.randn(4, 3, 5, dtype=D), 64), ShapeError,
     r"features: x must be a 2-D tensor \(N, d\) of inputs with d >= 1 features \(got shape \(4, 3, 5\)\)"),
    (lambda: wn.features(NET, torch.tensor([[0.0, float("nan"), 1.0]]), 64), NonFiniteInputError,
     r"features: x must be finite, but 1 of its 3 entries are NaN or Inf"),
    (lambda: wn.features(NET, torch.ones(4, 3, dtype=torch.int64), 64), ParameterError,
     r"features: x must hold floating-point numbers \(got dtype torch.int64\)"),
    (lambda: wn.features(torch.nn.Linear(3, 1), X, 64), ParameterError, r"features: net must be a widenet layer \(got Linear\)"),
    (lambda: wn.feature_ridge(torch.ones(5, 3), torch.ones(4), torch.ones(2, 3)), ShapeError,
     r"feature_ridge: y_train must have shape \(N,\) or \(N, C\) with N = 5"),
    (lambda: wn.feature_ridge(torch.ones(5, 3), torch.ones(5), torch.ones(2, 4)), ShapeError,
     r"feature_ridge: phi_train and phi_test must be 2-D"),
    (lambda: wn.feature_ridge(torch.ones(5, 3), torch.ones(5), torch.ones(2, 3), diag_reg=-1.0), ParameterError,
     r"feature_ridge: diag_reg must be a finite float >= 0 \(got -1.0\)"),
    (lambda: wn.feature_ridge(torch.ones(5, 3, dtype=D), torch.ones(5, dtype=D), torch.ones(2, 3, dtype=D), diag_reg=0.0),
     NumericalError, r"feature_ridge: the regularized Phi\^T Phi .* is not positive definite"),
], ids=["n_features-0", "n_features-float", "get", "seed", "dtype", "conv", "layer-norm", "nonlinearity-first",
        "x-3d", "x-nan", "x-int", "torch-module", "ridge-y", "ridge-d", "ridge-reg", "ridge-singular"])
def test_bad_inputs_raise_before_any_work(call, error, match):
    with pytest.raises(error, match=match):
        call()
