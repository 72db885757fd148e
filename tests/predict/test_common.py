"""What the functions of widenet.predict share (widenet.predict._common): error messages that
name the problem, the shape checks of full-output kernels (N1, N2, O, O) as
``empirical.ntk(..., outputs="full")`` gives them, and full-output kernels of independent
outputs (K (x) I) giving what the shared (N, N) kernel gives in every function."""

import math

import pytest
import torch

from predict._helpers import _mse
from widenet import predict as P
from widenet.errors import NonFiniteInputError, NumericalError, ParameterError, ShapeError

D = torch.float64


def test_errors_name_the_problem(data):
    k, y = data["k"].nngp, data["y"]
    singular = torch.ones(4, 4, dtype=D)
    with pytest.raises(NumericalError, match=r"4x4 training kernel is not numerically positive definite.*raise diag_reg"):
        P.gp_inference(singular, torch.ones(4))(torch.ones(2, 4))
    bad = k.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(NonFiniteInputError, match="k_train_train must be finite"):
        P.gp_inference(bad, y)
    with pytest.raises(ShapeError, match=r"one row per training point: kernel is 14x14, y_train has shape \(13, 3\)"):
        P.gradient_descent_mse(k, y[:13])
    with pytest.raises(ShapeError, match="one column per training point, 14"):
        P.gp_inference(k, y)(torch.ones(3, 13, dtype=D))
    with pytest.raises(ShapeError, match="must be square"):
        P.marginal_log_likelihood(k[:, :5], y)
    with pytest.raises(ParameterError, match="t must hold times >= 0"):
        P.gradient_descent_mse(k, y)(-1.0)
    with pytest.raises(ParameterError, match="learning_rate must be a finite float > 0"):
        P.gradient_descent_mse(k, y, learning_rate=0.0)
    with pytest.raises(ParameterError, match="diag_reg must be a finite float >= 0"):
        P.gp_inference(k, y, diag_reg=-1.0)
    with pytest.raises(ParameterError, match="t must be finite for the ODE solver"):
        P.gradient_descent(_mse, k, y)(None)
    with pytest.raises(ParameterError, match="loss\\(fx, y\\) must return a scalar tensor"):
        P.gradient_descent(lambda f, yy: f - yy, k, y)(1.0)
    with pytest.raises(ParameterError, match="get must be one of"):
        P.gp_inference(k, y, get="gp")
    with pytest.raises(ShapeError, match=r"k_test_test must be \(6, 6\)"):
        P.gp_inference(k, y)(data["kt"].nngp, torch.ones(5, 5, dtype=D))


def test_full_kernel_of_independent_outputs_equals_the_shared_kernel(full):
    """K[i, j, a, b] = K[i, j] delta_ab: every function gives what the (N, N) kernel gives."""
    ktt, ktd, kss, y = full
    shared_tt, shared_td, shared_ss = ktt[..., 0, 0], ktd[..., 0, 0], kss[..., 0, 0]
    o = y.shape[1]
    eye = torch.eye(o, dtype=D)
    kron = lambda k: k[..., None, None] * eye  # noqa: E731
    a = P.gp_inference(kron(shared_tt), y, 1e-3)(kron(shared_td), kron(shared_ss))
    b = P.gp_inference(shared_tt, y, 1e-3)(shared_td, shared_ss)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.covariance, kron(b.covariance), rtol=1e-9, atol=1e-11)
    t = torch.tensor([0.5, 3.0, math.inf])
    fa = P.gradient_descent_mse(kron(shared_tt), y, learning_rate=0.7)(t, kron(shared_td), fx_train_0=0.1 * y)
    fb = P.gradient_descent_mse(shared_tt, y, learning_rate=0.7)(t, shared_td, fx_train_0=0.1 * y)
    for u, v in zip(fa, fb):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)
    la = P.marginal_log_likelihood(kron(shared_tt), y, 1e-2)
    lb = P.marginal_log_likelihood(shared_tt, y, 1e-2)
    torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)
    # The stability edge: both normalize the loss by y.numel().
    assert P.max_learning_rate(kron(shared_tt)) == pytest.approx(P.max_learning_rate(shared_tt, y.numel()), rel=1e-12)


def test_full_output_shapes_are_checked(full):
    ktt, ktd, kss, y = full
    n, m, o = ktt.shape[0], ktd.shape[0], ktt.shape[2]
    with pytest.raises(ShapeError, match=rf"y_train must have shape \({n}, {o}\)"):
        P.gp_inference(ktt, y[:, :2])
    with pytest.raises(ShapeError, match="full-output kernel with 3 outputs, so k_test_train must be one too"):
        P.gp_inference(ktt, y)(ktd[..., 0, 0])
    with pytest.raises(ShapeError, match="one column per training point"):
        P.gp_inference(ktt, y)(ktd[:, :3])
    with pytest.raises(ShapeError, match=r"k_test_test must be \(5, 5, 3, 3\)"):
        P.gp_inference(ktt, y)(ktd, kss[..., 0, 0])
    with pytest.raises(ShapeError, match=r"\(N, N, O, O\)"):
        P.gp_inference(ktt[..., :2], y)
    with pytest.raises(ShapeError, match="full-output kernel"):
        P.gp_inference(ktt[..., 0, 0], y)(ktd)
    with pytest.raises(ShapeError, match="full-output kernel with 3 outputs"):
        P.gradient_descent_mse(ktt, y)(1.0, ktd[..., :2, :2])
