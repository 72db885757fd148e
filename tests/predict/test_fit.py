"""widenet.predict.fit: fit_hyperparameters recovers the prior that generated its data, by
gradient and on a grid; and the derivatives of kernels in their hyperparameters that the
gradient fit uses, forward mode against finite differences and reverse mode against forward."""

import math

import pytest
import torch

import widenet as wn
from predict._helpers import _reg
from widenet import predict as P
from widenet.errors import ParameterError

D = torch.float64


# ---- fit_hyperparameters ---------------------------------------------------------------------

def _relu_net(W_std, b_std):
    return wn.Serial(wn.Dense(1, W_std, b_std), wn.Relu(), wn.Dense(1, W_std, b_std))


@pytest.fixture(scope="module")
def prior_sample():
    """20 independent functions drawn from the NNGP prior of a known architecture."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(100, 3, generator=g, dtype=D) * (0.2 + 2 * torch.rand(100, 1, generator=g, dtype=D))
    k = _reg(_relu_net(1.5, 0.5).nngp(x), 1e-3)
    y = torch.linalg.cholesky(k) @ torch.randn(100, 20, generator=g, dtype=D)
    return x, y


def test_fit_hyperparameters_recovers_the_generating_prior(prior_sample):
    x, y = prior_sample
    fit = P.fit_hyperparameters(_relu_net, x, y, {"W_std": 1.0, "b_std": 0.2}, diag_reg=1e-2)
    assert fit.method == "gradient" and fit.success
    assert abs(fit.params["W_std"] / 1.5 - 1) < 0.1, fit
    assert abs(fit.params["b_std"] / 0.5 - 1) < 0.1, fit
    assert abs(math.log(fit.diag_reg / 1e-3)) < math.log(2), fit
    # The optimum beats the generating values (it is the maximum of the likelihood).
    truth = P.marginal_log_likelihood(_relu_net(1.5, 0.5).nngp(x), y, 1e-3)
    assert fit.log_likelihood >= float(truth) - 1e-6
    grid = P.fit_hyperparameters(_relu_net, x, y, {"W_std": 1.0, "b_std": 0.2}, diag_reg=1e-3,
                                 fit_diag_reg=False, method="grid",
                                 grid={"W_std": [1.0, 1.25, 1.5, 1.75], "b_std": [0.25, 0.5, 1.0]})
    assert grid.params == {"W_std": 1.5, "b_std": 0.5} and grid.method == "grid"


def test_a_trial_step_whose_kernel_overflows_is_stepped_back_from(prior_sample):
    # A line search may try a point far out on the log scale where the kernel leaves the
    # dtype's range (NumericalError); the fit treats it as an infinite objective. Here every
    # W_std above 1.3 is such a point and the likelihood's maximum (1.5) lies beyond it.
    from widenet.errors import NumericalError

    def walled(W_std, b_std):
        if float(W_std) > 1.3:
            raise NumericalError("the kernel left the dtype's range")
        return _relu_net(W_std, b_std)

    x, y = prior_sample
    fit = P.fit_hyperparameters(walled, x, y, {"W_std": 1.0, "b_std": 0.2}, diag_reg=1e-2)
    start = P.marginal_log_likelihood(_relu_net(1.0, 0.2).nngp(x), y, 1e-2)
    assert 1.0 < fit.params["W_std"] <= 1.3 and math.isfinite(fit.log_likelihood)
    assert fit.log_likelihood > float(start)


def test_fit_falls_back_to_the_grid_for_non_differentiable_parameters(prior_sample):
    x, y = prior_sample

    def build(W_std, c):  # Polynomial's coefficients are plain floats: no forward-mode tangent
        return wn.Serial(wn.Dense(1, W_std, 0.1), wn.Polynomial((0.0, 1.0, c)), wn.Dense(1, 1.0, 0.1))

    fit = P.fit_hyperparameters(build, x[:30], y[:30, :3], {"W_std": 1.0, "c": 0.1}, fit_diag_reg=False,
                                grid={"W_std": [1.0, 2.0], "c": [0.01, 0.1]})
    assert fit.method == "grid" and fit.evaluations >= 4
    with pytest.raises(ParameterError, match="method='grid'"):
        P.fit_hyperparameters(build, x[:30], y[:30, :3], {"W_std": 1.0, "c": 0.1}, method="gradient")


# ---- kernels differentiable in their hyperparameters -----------------------------------------

_X = torch.randn(5, 4, generator=torch.Generator().manual_seed(5), dtype=D)
_XS = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(6), dtype=D)
_DIFF = {
    "dense-relu": (lambda p: wn.Serial(wn.Dense(8, p["w"], p["b"]), wn.Relu(), wn.Dense(1, p["w"], p["b"])), {"w": 1.3, "b": 0.2}, _X),
    "standard-erf": (lambda p: wn.Serial(wn.Dense(8, p["w"], p["b"], parameterization="standard"), wn.Erf(p["a"], 0.7, 0.1), wn.Dense(1, p["w"], p["b"], parameterization="standard")), {"w": 1.3, "b": 0.2, "a": 1.1}, _X),
    "abrelu-sin-rbf": (lambda p: wn.Serial(wn.Dense(8, 1.2, 0.1), wn.ABRelu(p["a"], 1.2), wn.Dense(8), wn.Sin(1.0, p["s"], 0.3), wn.Dense(8), wn.Rbf(p["g"]), wn.Dense(1)), {"a": -0.3, "s": 0.8, "g": 0.6}, _X),
    "gelu-tanh-quadrature": (lambda p: wn.Serial(wn.Dense(8, p["w"], 0.1), wn.Gelu(), wn.Dense(8, p["w"]), wn.Tanh(), wn.Dense(1)), {"w": 1.2}, _X),
    "conv-pool": (lambda p: wn.Serial(wn.Conv(8, 3, W_std=p["w"], b_std=p["b"]), wn.Relu(), wn.Conv(8, 3, padding="valid", W_std=p["w"]), wn.GlobalAvgPool(), wn.Dense(1, p["w"])), {"w": 1.3, "b": 0.2}, _XS),
    # Two size-preserving convolutions: the second one's window sums (the flat-offset path)
    # act on tiles that carry tangents.
    "conv-same-stack": (lambda p: wn.Serial(wn.Conv(8, 3, W_std=p["w"], b_std=p["b"]), wn.Relu(), wn.Conv(8, 3, W_std=p["w"]), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)), {"w": 1.3, "b": 0.2}, _XS),
    "layernorm-dropout": (lambda p: wn.Serial(wn.Conv(8, 3, W_std=1.2), wn.LayerNorm(eps=p["e"]), wn.Relu(), wn.Dropout(p["r"]), wn.GlobalAvgPool(), wn.Dense(1)), {"e": 0.3, "r": 0.2}, _XS),
    "attention-decay": (lambda p: wn.Serial(wn.Dense(8, 1.0, 0.1), wn.SelfAttention(8, pos_emb="sum", pos_emb_std=p["s"], pos_emb_p=p["p"], pos_emb_decay=lambda d: torch.exp(-d / 4)), wn.GlobalAvgPool(), wn.Dense(1)), {"s": 0.8, "p": 1.5}, _XS),
    "attention": (lambda p: wn.Serial(wn.Dense(8, 1.0, 0.1), wn.SelfAttention(8, W_query_std=p["q"], W_value_std=p["v"], b_std=0.2, pos_emb="sum"), wn.GlobalAvgPool(), wn.Dense(1)), {"q": 1.1, "v": 0.9}, _XS),
}


@pytest.mark.parametrize("name", list(_DIFF))
def test_forward_mode_derivatives_match_finite_differences(name):
    import torch.autograd.forward_ad as fwAD

    build, p0, x = _DIFF[name]

    def value(p):
        k = build(p).kernel(x)
        return k.nngp.sum() + 0.7 * k.ntk.sum()

    for key in p0:
        with fwAD.dual_level():
            p = {k: torch.tensor(v, dtype=D) for k, v in p0.items()}
            p[key] = fwAD.make_dual(p[key], torch.tensor(1.0, dtype=D))
            tangent = fwAD.unpack_dual(value(p)).tangent
        h = 1e-5
        fd = (value({**p0, key: p0[key] + h}) - value({**p0, key: p0[key] - h})) / (2 * h)
        assert tangent is not None
        assert abs(float(tangent - fd)) <= 1e-7 * abs(float(fd)), (key, float(tangent), float(fd))


@pytest.mark.parametrize("name", list(_DIFF))
def test_reverse_mode_derivatives_equal_forward_mode_ones(name):
    import torch.autograd.forward_ad as fwAD

    build, p0, x = _DIFF[name]

    def value(p):
        k = build(p).kernel(x)
        return k.nngp.sum() + 0.7 * k.ntk.sum()

    p = {k: torch.tensor(v, dtype=D, requires_grad=True) for k, v in p0.items()}
    grads = torch.autograd.grad(value(p), list(p.values()))
    for key, grad in zip(p0, grads):
        with fwAD.dual_level():
            q = {k: torch.tensor(v, dtype=D) for k, v in p0.items()}
            q[key] = fwAD.make_dual(q[key], torch.tensor(1.0, dtype=D))
            tangent = fwAD.unpack_dual(value(q)).tangent
        assert abs(float(grad - tangent)) <= 1e-11 * abs(float(tangent)), (key, float(grad), float(tangent))
