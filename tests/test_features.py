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


def _assert_one_map(net, x1, x2, m):
    """Features of x1 (50 rows), x2 (83) and one row of x2 equal those of the concatenated
    batch bit for bit (seed 5); returns x1's pair (nngp, ntk)."""
    both = wn.features(net, torch.cat([x1, x2]), m, get=("nngp", "ntk"), seed=5)
    one = wn.features(net, x1, m, get=("nngp", "ntk"), seed=5)
    two = wn.features(net, x2, m, get=("nngp", "ntk"), seed=5)
    single = wn.features(net, x2[17:18], m, get=("nngp", "ntk"), seed=5)
    for name in ("nngp", "ntk"):
        assert torch.equal(getattr(one, name), getattr(both, name)[:50])  # bit for bit
        assert torch.equal(getattr(two, name), getattr(both, name)[50:])
        assert torch.equal(getattr(single, name), getattr(both, name)[67:68])
    return one


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_feature_map_per_seed_whatever_the_batch(dtype):
    net = wn.Serial(wn.Dense(64, 1.4, 0.1), wn.Erf(), wn.Dense(64, 1.2, None, "standard"), wn.Relu(), wn.Dense(1))
    gen = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(50, 7, generator=gen, dtype=dtype), torch.randn(83, 7, generator=gen, dtype=dtype)
    one = _assert_one_map(net, x1, x2, 300)
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
XC = torch.randn(4, 2, 6, dtype=D)


@pytest.mark.parametrize("call, error, match", [
    (lambda: wn.features(NET, X, 0), ParameterError, r"features: n_features must be an integer >= 1 \(got 0\)"),
    (lambda: wn.features(NET, X, 64.0), ParameterError, r"features: n_features must be an integer >= 1 \(got 64.0\)"),
    (lambda: wn.features(NET, X, 64, get="foo"), ParameterError, r"features: get must be one of 'nngp', 'ntk' \(got 'foo'\)"),
    (lambda: wn.features(NET, X, 64, seed=-1), ParameterError, r"features: seed must be an integer >= 0 \(got -1\)"),
    (lambda: wn.features(NET, X, 64, dtype=torch.float16), ParameterError,
     r"features: dtype must be torch.float32, torch.float64 or None \(got torch.float16\)"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.MaxPool(2), wn.Flatten(), wn.Dense(1)), XC, 64),
     ParameterError, r"features: net must be a Serial network of Dense, Conv, AvgPool, SumPool, GlobalAvgPool, "
                     r"GlobalSumPool and Flatten layers and elementwise nonlinearities \(got MaxPool\(.*\)\); .* "
                     r"net\.kernel\(x1, x2\), or in tiles with widenet\.blocked\.compute"),
    (lambda: wn.features(wn.Serial(wn.Dense(8), wn.LayerNorm()), X, 64), ParameterError, r"\(got LayerNorm\(.*\)\)"),
    (lambda: wn.features(wn.Serial(wn.Relu(), wn.Dense(1)), X, 64), LayerOrderError,
     r"features: Relu\(\) needs a Gaussian input, the output of a Dense or Conv layer"),
    (lambda: wn.features(NET, torch.randn(4, 3, 5, dtype=D), 64), ShapeError,
     r"features: x must be a 2-D tensor \(N, d\) of inputs with d >= 1 features \(got shape \(4, 3, 5\)\): "
     r"with \(N, C, \*S\) inputs this network's output would keep their positions"),
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
    (lambda: wn.features(NET, X, 2, method="exact"), ParameterError,
     r"features: method must be one of 'random', 'nystrom' \(got 'exact'\)"),
    (lambda: wn.features(NET, X, 2, method="nystrom"), ParameterError, r"features: method='nystrom' needs landmarks"),
    (lambda: wn.features(NET, X, 2, landmarks=X), ParameterError,
     r"features: landmarks are read by method='nystrom' only \(got method='random'\)"),
    (lambda: wn.features(NET, X, 2, method="nystrom", landmarks=torch.randn(5, 4, dtype=D)), ShapeError,
     r"features: landmarks must be shaped like x, \(L, \*x.shape\[1:\]\) \(got landmarks \(5, 4\) and x \(4, 3\)\)"),
    (lambda: wn.features(NET, X, 6, method="nystrom", landmarks=X), ParameterError,
     r"features: n_features must be <= the number of landmarks for method='nystrom' \(got n_features=6 with 4 landmarks\)"),
    (lambda: wn.features(NET, X, 2, method="nystrom", landmarks=torch.tensor([[0.0, float("inf"), 1.0]])),
     NonFiniteInputError, r"features: landmarks must be finite"),
], ids=["n_features-0", "n_features-float", "get", "seed", "dtype", "conv", "layer-norm", "nonlinearity-first",
        "x-3d", "x-nan", "x-int", "torch-module", "ridge-y", "ridge-d", "ridge-reg", "ridge-singular",
        "method", "nystrom-no-landmarks", "landmarks-random", "landmarks-shape", "landmarks-few", "landmarks-inf"])
def test_bad_inputs_raise_before_any_work(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- convolutional networks: the CNTK sketch ------------------------------------------------

def _images(shape, seed=0):
    """Inputs (N, C, *S) on the sphere of radius sqrt(C prod(S)), as _inputs."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)
    return x / x.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (x.ndim - 1)) * math.sqrt(x[0].numel())


CNNS = {
    # 1-D, ReLU, "same", stride 2 in the second Conv, two Convs each read by a nonlinearity, GlobalAvgPool.
    "1d-relu-same-stride2-gap": (
        wn.Serial(wn.Conv(8, 3, 1, "same", 1, 1.4, 0.1), wn.Relu(), wn.Conv(8, 3, 2, "same", 1, 1.4, 0.1),
                  wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1, 1.0, 0.1)), (16, 2, 8)),
    # 1-D, Erf, "valid", standard parameterization without bias, AvgPool, Flatten (its sketch: 4 m columns).
    "1d-erf-valid-standard-avgpool-flatten": (
        wn.Serial(wn.Conv(8, 3, 1, "valid", 1, 1.3, None, "standard"), wn.Erf(), wn.AvgPool(2),
                  wn.Conv(8, 2, 1, "valid", 1, 1.2, None, "standard"), wn.Erf(), wn.Flatten(),
                  wn.Dense(1, 1.0, None, "standard")), (16, 2, 12)),
    # 2-D, ReLU, "circular", "same"-padded AvgPool, a (2, 3) window with stride 2, both parameterizations.
    "2d-relu-circular-avgpool-gap": (
        wn.Serial(wn.Conv(8, 3, 1, "circular", 1, 1.4, 0.2), wn.Relu(), wn.AvgPool(2, padding="same"),
                  wn.Conv(8, (2, 3), 2, "circular", 1, 1.3, 0.2, "standard"), wn.Relu(), wn.GlobalAvgPool(),
                  wn.Dense(1)), (16, 1, 6, 6)),
    # 2-D, Erf, "same" with stride 2, Flatten (its sketch: 9 m columns), then a Dense-Erf head.
    "2d-erf-same-stride2-flatten-mlp": (
        wn.Serial(wn.Conv(8, 3, 2, "same", 1, 1.5, 0.1), wn.Erf(), wn.Flatten(), wn.Dense(8, 1.2, 0.1), wn.Erf(),
                  wn.Dense(1)), (16, 3, 5, 5)),
}


@pytest.mark.parametrize("name", CNNS)
def test_conv_error_is_small_and_shrinks_as_one_over_sqrt_n_features(name):
    net, shape = CNNS[name]
    x = _images(shape)
    k = net.kernel(x)
    # Each entry's error is a sum of terms with standard deviation of order 1/sqrt(m) (the bias
    # of nested layers is of order 1/m), so 4x the features halves the largest entry error:
    # an expected factor of 2 (more where the 1/m bias still shows, less where m = 512 is not
    # yet asymptotic). Averaged over 8 seeds the factor measured 1.67 to 2.54 for these
    # networks (over 12 seeds: 1.74 to 2.43); an error that does not shrink with m (a sketch
    # whose terms do not cancel over its columns) gives a factor near 1.
    small = np.mean([_errors(net, x, k, 512, s) for s in range(8)], axis=0)
    large = np.mean([_errors(net, x, k, 2048, s) for s in range(8)], axis=0)
    assert (small / large >= 1.4).all(), (small, large)
    # Measured at 2048 features: mean errors 0.052 to 0.089, single seeds at most 0.16; 0.15
    # leaves a margin of 1.7x over the worst mean, and is far below any wrong scaling rule
    # (the linear networks below pin those exactly).
    assert (large < 0.15).all(), large


def _linear_cnns(padding, stride, parameterization, b_std):
    def conv(c, k, dilation=1, w=1.3):
        return wn.Conv(c, k, stride, padding, dilation, w, b_std, parameterization)

    def dense(w):
        return wn.Dense(1, w, b_std, parameterization)

    pool = "valid" if padding == "valid" else "same"
    return [
        (wn.Serial(conv(5, 3), wn.GlobalAvgPool(), dense(0.9)), (7, 2, 9)),
        (wn.Serial(conv(5, 3, 2), wn.Conv(4, 2, 1, padding, 1, 0.8, b_std, parameterization),
                   wn.AvgPool(2, padding=pool), wn.Flatten(), dense(0.9)), (7, 2, 11)),
        (wn.Serial(wn.Dense(3, 1.1, b_std, parameterization), conv(4, (3, 2)), wn.SumPool(2, 1, padding),
                   wn.GlobalSumPool(), dense(0.7)), (7, 3, 6, 5)),
        (wn.Serial(conv(3, (2, 2, 3)), wn.Flatten(), dense(1.1)), (5, 2, 3, 4, 4)),
    ]


@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("parameterization, b_std",
                         [("ntk", 0.3), ("standard", None), ("ntk", None), ("standard", 0.2)])
def test_linear_conv_networks_are_exact(padding, stride, parameterization, b_std):
    # No nonlinearity, no randomness (every concatenation within m columns): the Conv, pooling
    # and Flatten rules themselves, every padding (zeros, none, wrap-around) and stride, 1-D to
    # 3-D, dilation, a Dense at each position, both parameterizations with and without bias.
    for net, shape in _linear_cnns(padding, stride, parameterization, b_std):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=D)
        k = net.kernel(x)
        phi = wn.features(net, x, 4096, get=("nngp", "ntk"))
        for name in ("nngp", "ntk"):
            want = getattr(k, name)
            got = getattr(phi, name) @ getattr(phi, name).T
            assert float((got - want).abs().max()) <= 1e-10 * float(want.abs().max()), (net, name)


def test_reduced_conv_and_flatten_features_are_unbiased():
    # A Conv that no nonlinearity reads (3 m columns) and a Flatten (4 m) are sketched to m
    # columns: the mean over 20 maps is much closer than one map.
    net = wn.Serial(wn.Conv(8, 3, 1, "same", 1, 1.4, 0.1), wn.Relu(), wn.Conv(8, 3, 2, "same", 1, 1.2, 0.1),
                    wn.Flatten(), wn.Dense(1))
    x = _images((16, 2, 8), seed=4)
    k = net.kernel(x)
    maps = [wn.features(net, x, 128, get=("nngp", "ntk"), seed=s) for s in range(20)]
    for name in ("nngp", "ntk"):
        grams = [getattr(p, name) @ getattr(p, name).T for p in maps]
        singles = [_rel(g, getattr(k, name)) for g in grams]
        mean = _rel(torch.stack(grams).mean(0), getattr(k, name))
        assert mean < 0.45 * float(np.median(singles)), (name, mean, singles)


def test_conv_output_dimension_is_as_documented():
    x = torch.randn(3, 1, 6, dtype=D)
    m = 40

    def dims(net, n_features=m):
        phi = wn.features(net, x, n_features, get=("nngp", "ntk"))
        return phi.nngp.shape[1], phi.ntk.shape[1]

    # Conv, nonlinearity (m, m), ..., global pooling or Flatten (sketched to m), Dense with a bias.
    assert dims(wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.Conv(4, 3, 2), wn.Erf(), wn.GlobalAvgPool(), wn.Dense(1))) \
        == (m + 1, 2 * m + 1)
    assert dims(wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.Flatten(), wn.Dense(1, b_std=None))) == (m, 2 * m)
    # Ends with a nonlinearity then global pooling: m and m.
    assert dims(wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.GlobalSumPool())) == (m, m)
    # Exact concatenations: Conv(q=3, bias) on C=1: Z 3 + 1, Psi 3 (1 + 0) + 1; Dense(bias): 5 and 5 + 4.
    assert dims(wn.Serial(wn.Conv(4, 3), wn.GlobalAvgPool(), wn.Dense(1))) == (5, 9)
    # Two Convs: Z 1 -> 4 -> 3 * 4 + 1 = 13, Psi 0 -> 4 -> 3 (4 + 4) + 1 = 25; Flatten over 6 positions, Dense.
    two = wn.Serial(wn.Conv(4, 3), wn.Conv(4, 3), wn.Flatten(), wn.Dense(1))
    assert dims(two, 1000) == (6 * 13 + 1, 6 * 13 + 1 + 6 * 25)
    # ... past m columns each is sketched to m: the second Conv's Psi (25 > 24), then Flatten's Z and Psi.
    assert dims(two, 24) == (24 + 1, 24 + 1 + 24)
    assert dims(wn.Serial(wn.Conv(4, 3), wn.Conv(4, 3), wn.GlobalAvgPool(), wn.Dense(1)), 24) == (14, 14 + 24)
    # A Conv followed by a nonlinearity is never formed, so its width does not count: m, m.
    assert dims(wn.Serial(wn.Conv(4, 5), wn.Conv(4, 5), wn.Relu(), wn.GlobalAvgPool()), 8) == (8, 8)
    assert wn.features(wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)), x[:0], m).shape \
        == (0, 2 * m + 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv_features_are_one_feature_map_per_seed_whatever_the_batch(dtype):
    # Chunks of 64 inputs here: the parts below start inside chunks of the whole, and the
    # whole spans three.
    net = wn.Serial(wn.Conv(8, 3, 1, "same", 1, 1.4, 0.1), wn.Relu(), wn.AvgPool(2, padding="same"),
                    wn.Conv(8, 2, 1, "circular", 1, 1.2, None, "standard"), wn.Erf(), wn.Flatten(), wn.Dense(1))
    gen = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(50, 2, 4, 4, generator=gen, dtype=dtype), torch.randn(83, 2, 4, 4, generator=gen, dtype=dtype)
    one = _assert_one_map(net, x1, x2, 64)
    assert torch.equal(wn.features(net, x1, 64, seed=5), one.ntk)
    assert torch.equal(wn.features(net, x1, 64, get="nngp", seed=5), one.nngp)
    other = wn.features(net, x1, 64, seed=6)
    assert other.shape == one.ntk.shape and (other - one.ntk).abs().max() > 0.01
    if dtype == torch.float32:  # the same map as float64, to rounding
        phi64 = wn.features(net, x1.double(), 64, seed=5)
        torch.testing.assert_close(one.ntk.double() @ one.ntk.double().T, phi64 @ phi64.T, rtol=1e-4, atol=1e-4)


CONV = wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))


@pytest.mark.parametrize("call, error, match", [
    (lambda: wn.features(CONV, X, 64), ShapeError,
     r"features: x must be a tensor \(N, C, \*S\) with 1 to 3 spatial axes for a network with Conv\(.*\) "
     r"\(got shape \(4, 3\)\)"),
    (lambda: wn.features(CONV, torch.randn(2, 1, 1, 1, 1, 3), 64), ShapeError,
     r"features: x must be \(N, d\) with d >= 1 features or \(N, C, \*S\) with 1 to 3 spatial axes, none of "
     r"size 0 \(got shape \(2, 1, 1, 1, 1, 3\)\)"),
    (lambda: wn.features(CONV, torch.randn(2, 1, 0), 64), ShapeError, r"none of size 0 \(got shape \(2, 1, 0\)\)"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.Conv(1, 3)), XC, 64), ShapeError,
     r"features: the network's output would keep the positions of its \(N, C, \*S\) inputs \(got shape \(4, 2, 6\)\), "
     r"but random features are one vector per input: remove the positions with Flatten, GlobalAvgPool or "
     r"GlobalSumPool before the output layers \(a Dense layer acts on the channels at each position"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.Dense(4), wn.Relu(), wn.Dense(1)), XC, 64),
     ShapeError, r"features: the network's output would keep the positions"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Conv(8, 3), wn.Dense(1)), XC, 64),
     ShapeError, r"features: Conv\(.*\) needs positions, but its input has none \(after Flatten or global pooling\)"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.Flatten(), wn.AvgPool(2), wn.Dense(1)), XC, 64),
     ShapeError, r"features: AvgPool\(.*\) needs positions"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 9, padding="valid"), wn.Relu(), wn.Flatten(), wn.Dense(1)), XC, 64),
     ShapeError, r"Conv: with padding='valid' each spatial size must be at least the \(dilated\) window 9 \(got 6\)"),
    (lambda: wn.features(wn.Serial(wn.Relu(), wn.Conv(8, 3), wn.GlobalAvgPool()), XC, 64), LayerOrderError,
     r"features: Relu\(\) needs a Gaussian input, the output of a Dense or Conv layer"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.AvgPool(2), wn.Relu(), wn.Flatten(), wn.Dense(1)),
                         XC, 64), LayerOrderError, r"features: Relu\(\) needs a Gaussian input"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.Flatten(), wn.Erf(), wn.Dense(1)), XC, 64), LayerOrderError,
     r"features: Erf\(.*\) needs a Gaussian input"),
    (lambda: wn.features(wn.Serial(wn.ConvLocal(8, 3), wn.Relu(), wn.Flatten(), wn.Dense(1)), XC, 64),
     ParameterError, r"\(got ConvLocal\(.*\)\); random-feature sketches support only those"),
    (lambda: wn.features(wn.Serial(wn.Conv(8, 3), wn.LayerNorm(), wn.GlobalAvgPool(), wn.Dense(1)), XC, 64),
     ParameterError, r"\(got LayerNorm\(.*\)\)"),
    (lambda: wn.features(CONV, torch.full((2, 1, 5), float("inf")), 64), NonFiniteInputError,
     r"features: x must be finite"),
], ids=["x-2d", "x-6d", "x-empty", "keeps-positions", "dense-on-positions", "conv-after-pool", "pool-after-flatten",
        "valid-window", "nonlinearity-first", "nonlinearity-after-pool", "nonlinearity-after-flatten", "conv-local",
        "layer-norm", "x-inf"])
def test_conv_bad_inputs_raise_before_any_work(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- method="nystrom" --------------------------------------------------------------------------

NORMED = wn.Serial(wn.Dense(64, 1.3, 0.2), wn.LayerNorm(), wn.Relu(), wn.Dense(1, 1.3, 0.2))  # no random features
CONV_NORMED = wn.Serial(wn.Conv(8, 3, padding="same"), wn.LayerNorm(axis=(1, 2)), wn.Relu(), wn.AvgPool(2),
                        wn.Flatten(), wn.Dense(1))
# A landmark's features come from the kernel between x and the landmarks, a cross call: for an
# input paired with itself there the ReLU family's angle arccos(rho) at rho = 1 - O(eps) is off
# by O(sqrt(eps)) (the same-inputs call sets it to 0), so comparisons at landmarks hold to 1e-7.
AT_LANDMARKS = 1e-7


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("net, shape", [(NORMED, (6,)), (NET, (3,)), (CONV_NORMED, (2, 6))],
                         ids=["layernorm", "mlp", "conv-layernorm"])
def test_nystrom_features_give_the_nystrom_kernel_and_the_exact_one_at_landmarks(net, shape):
    g = torch.Generator().manual_seed(0)
    pool, x1, x2 = (torch.randn((n,) + shape, generator=g, dtype=D) for n in (40, 7, 5))
    phi1, phi2 = (wn.features(net, x, 12, seed=3, method="nystrom", landmarks=pool) for x in (x1, x2))
    chosen = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:12].sort().values
    c = pool[chosen]
    k = net.kernel(torch.cat([x1, x2, c])).ntk  # the Nystrom formula, by a solve (no eigendecomposition)
    k1c, k2c, kcc = k[:7, 12:], k[7:12, 12:], k[12:, 12:]
    formula = k1c @ torch.linalg.solve(kcc, k2c.T)
    assert rel_error(phi1 @ phi2.T, formula) < 1e-8
    at = wn.features(net, c, 12, seed=3, method="nystrom", landmarks=pool)
    assert rel_error(at @ at.T, kcc) < AT_LANDMARKS  # exact for the landmarks themselves
    assert rel_error(phi1 @ at.T, k1c) < AT_LANDMARKS


def test_nystrom_ridge_on_all_training_points_is_exact_kernel_ridge_regression():
    g = torch.Generator().manual_seed(1)
    x, xt = torch.randn(30, 6, generator=g, dtype=D), torch.randn(9, 6, generator=g, dtype=D)
    y = torch.randn(30, 2, generator=g, dtype=D)
    phi, phit = (wn.features(NORMED, a, 30, method="nystrom", landmarks=x) for a in (x, xt))
    ours = wn.feature_ridge(phi, y, phit, diag_reg=1e-3)
    k, kt = NORMED.ntk(x), NORMED.ntk(xt, x)
    reg = 1e-3 * float(k.diagonal().mean())  # feature_ridge's diag_reg: relative to the mean diagonal
    exact = kt @ torch.linalg.solve(k + reg * torch.eye(30, dtype=D), y)
    assert rel_error(ours, exact) < AT_LANDMARKS  # every training point is a landmark


def test_nystrom_is_one_map_per_seed_whatever_the_batch():
    g = torch.Generator().manual_seed(2)
    pool, x = torch.randn(50, 6, generator=g, dtype=D), torch.randn(11, 6, generator=g, dtype=D)
    whole = wn.features(NORMED, x, 20, get=("nngp", "ntk"), method="nystrom", landmarks=pool)
    parts = [wn.features(NORMED, x[a:b], 20, get=("nngp", "ntk"), method="nystrom", landmarks=pool)
             for a, b in ((0, 4), (4, 11))]
    for name in ("nngp", "ntk"):
        joined = torch.cat([getattr(p, name) for p in parts])
        assert rel_error(joined, getattr(whole, name)) < 1e-12
        single = wn.features(NORMED, x, 20, get=name, method="nystrom", landmarks=pool)
        assert rel_error(single, getattr(whole, name)) < 1e-12
    other = wn.features(NORMED, x, 20, seed=1, method="nystrom", landmarks=pool)
    assert rel_error(other @ other.T, whole.ntk @ whole.ntk.T) > 1e-6  # other landmarks
    low = wn.features(NORMED, x.float(), 20, method="nystrom", landmarks=pool)
    assert low.dtype == torch.float32 and rel_error(low.double(), whole.ntk) < 1e-4
    repeated = wn.features(NORMED, x, 20, method="nystrom", landmarks=torch.cat([pool[:5]] * 10))
    assert repeated.shape == (11, 5)  # 5 distinct landmarks: rank 5, the repeats dropped
