"""Solvers over blocked kernels (widenet.blocked._solvers): conjugate gradients over a stored
kernel, FALKON against exact kernel ridge regression, and gp_inference by CG over a store."""

import pytest
import torch

import widenet as wn
from blocked._helpers import _net
from widenet import blocked
from widenet.errors import ParameterError, ShapeError

D = torch.float64


def test_cg_over_a_stored_kernel_matches_the_direct_solve(tmp_path):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(57, 6, generator=g, dtype=D)
    y = torch.randn(57, 3, generator=g, dtype=D)
    net = _net()
    store = blocked.compute(net, x, tile=10, store=tmp_path / "k")
    k = net.kernel(x).ntk
    reg = 1e-3 * torch.trace(k) / 57
    direct = torch.linalg.solve(k + reg * torch.eye(57, dtype=D), y)
    # Row blocks of 7 rows (memory of 7 rows of 57 float64), read from disk every iteration.
    out = blocked.cg(store, y, diag_reg=1e-3, memory=8 * 57 * 7, tol=1e-12)
    assert out.iterations < 57 * 10 and bool((out.residual <= 1e-12).all())
    assert (out.solution - direct).norm() / direct.norm() <= 1e-6
    one = blocked.cg(k, y[:, 0], diag_reg=1e-3, tol=1e-12)
    assert one.solution.shape == (57,)
    assert (one.solution - direct[:, 0]).norm() / direct[:, 0].norm() <= 1e-6
    nngp = blocked.cg(store, y, diag_reg=0.5, get="nngp", diag_reg_absolute_scale=True, tol=1e-12)
    torch.testing.assert_close(nngp.solution, torch.linalg.solve(net.kernel(x).nngp + 0.5 * torch.eye(57, dtype=D), y),
                               rtol=1e-6, atol=1e-9)
    with pytest.raises(ShapeError, match="one row per kernel row"):
        blocked.cg(store, y[:5])
    with pytest.raises(wn.errors.NumericalError, match="not positive definite"):
        blocked.cg(-k, y, tol=1e-12)


def _digits(n_train, n_test):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=D)
    x = (x - x.mean(0)) / (x.std(0) + 1)
    y = torch.nn.functional.one_hot(torch.tensor(data.target), 10).to(D) - 0.1
    return x[:n_train], y[:n_train], x[n_train:n_train + n_test], y[n_train:n_train + n_test]


def test_falkon_with_all_centers_is_exact_krr_and_with_half_is_within_one_percent():
    """Test error = classification error on digits (one-hot regression): FALKON with M = n/2
    centers within one percentage point of exact kernel ridge regression, its test MSE gap
    shrinking as M grows, and exact KRR itself at M = n."""
    x, y, xt, yt = _digits(600, 400)
    net = wn.Serial(wn.Dense(256, W_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(256, W_std=1.5, b_std=0.1), wn.Relu(),
                    wn.Dense(10, W_std=1.5))
    lam = 1e-3
    k = net.kernel(x).ntk
    k_test = net.kernel(xt, x).ntk
    exact = k_test @ torch.linalg.solve(k + lam * 600 * torch.eye(600, dtype=D), y)
    error = lambda p: float((p.argmax(1) != yt.argmax(1)).double().mean())  # noqa: E731
    mse = lambda p: float(((p - yt) ** 2).mean())  # noqa: E731
    full = blocked.falkon(net, x, y, n_centers=600, diag_reg=lam, tol=1e-12, maxiter=200)
    assert (full(xt) - exact).norm() / exact.norm() <= 1e-6
    gaps = []
    for m in (100, 200, 300):
        fit = blocked.falkon(net, x, y, n_centers=m, diag_reg=lam, seed=1)
        assert fit.iterations <= 40  # the Nystrom preconditioner: tens of iterations, not hundreds
        gaps.append(mse(fit(xt)) - mse(exact))
    assert gaps[0] > gaps[1] > gaps[2] > 0
    # Kernel blocks computed on the fly in every iteration (nothing kept) give the same model.
    fly = blocked.falkon(net, x, y, n_centers=300, diag_reg=lam, seed=1, cache=False, memory=8 * 300 * 100)
    torch.testing.assert_close(fly(xt), fit(xt), rtol=1e-6, atol=1e-8)
    assert abs(error(fit(xt)) - error(exact)) <= 0.01
    with pytest.raises(ParameterError, match="n_centers must be at most"):
        blocked.falkon(net, x, y, n_centers=601)


def test_gp_inference_by_cg_over_a_store_matches_cholesky(tmp_path):
    from widenet import predict as P

    g = torch.Generator().manual_seed(8)
    x = torch.randn(40, 5, generator=g, dtype=D)
    xt = torch.randn(7, 5, generator=g, dtype=D)
    y = torch.randn(40, 2, generator=g, dtype=D)
    net = _net()
    store = blocked.compute(net, x, tile=9, store=tmp_path / "k")
    k, kt, ks = net.kernel(x), net.kernel(xt, x), net.kernel(xt)
    exact = P.gp_inference(k.nngp, y, 1e-3)(kt.nngp, ks.nngp)
    for train in (store, k.nngp):
        out = P.gp_inference(train, y, 1e-3, solver="cg", tol=1e-12, memory=8 * 40 * 5)(kt.nngp, ks.nngp)
        torch.testing.assert_close(out.mean, exact.mean, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(out.covariance, exact.covariance, rtol=1e-7, atol=1e-9)
    ntk = P.gp_inference(store, y, 1e-3, get="ntk", solver="cg", tol=1e-12)(kt.ntk)
    torch.testing.assert_close(ntk, P.gp_inference(k.ntk, y, 1e-3, get="ntk")(kt.ntk), rtol=1e-8, atol=1e-10)
    with pytest.raises(ParameterError, match="solver='cg'"):
        P.gp_inference(store, y, solver="cholesky")
    # "auto" (the default): CG for a store, Cholesky for a kernel in memory.
    torch.testing.assert_close(P.gp_inference(store, y, 1e-3)(kt.nngp), exact.mean, rtol=1e-8, atol=1e-10)
    assert P.gp_inference(k.nngp, y, 1e-3)._solver == "cholesky"


def test_cg_and_falkon_report_each_iteration_to_a_callback_and_a_progress_bar(capsys):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=g, dtype=D)
    y = torch.randn(40, generator=g, dtype=D)
    net = _net()
    seen = []
    out = blocked.cg(net.kernel(x), y, diag_reg=1e-3, tol=1e-10, callback=lambda it, res: seen.append((it, res)))
    assert [it for it, _ in seen] == list(range(out.iterations + 1))
    assert seen[0][1] == pytest.approx(1.0) and seen[-1][1] == pytest.approx(float(out.residual))
    assert seen[-1][1] < 1e-10
    assert capsys.readouterr().err == ""  # off by default
    blocked.cg(net.kernel(x), y, diag_reg=1e-3, progress=True)
    err = capsys.readouterr().err
    assert "blocked.cg" in err and "iteration" in err and "residual" in err and "-> 1e-10" in err
    seen.clear()
    model = blocked.falkon(net, x, y, n_centers=20, diag_reg=1e-4, callback=lambda it, res: seen.append(it))
    assert seen == list(range(model.iterations + 1))
    with pytest.raises(ParameterError, match=r"blocked.cg: callback must be a callable \(iteration, residual\)"):
        blocked.cg(net.kernel(x), y, callback=3)
    with pytest.raises(ParameterError, match=r"blocked.falkon: progress must be a bool \(got 'yes'\)"):
        blocked.falkon(net, x, y, n_centers=5, progress="yes")


def test_get_takes_a_tuple_of_names_everywhere(tmp_path):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 5, generator=g, dtype=D)
    y = torch.randn(30, generator=g, dtype=D)
    xt = torch.randn(6, 5, generator=g, dtype=D)
    net = _net()
    k = net.kernel(x)
    both = blocked.compute(net, x, get=("ntk", "nngp"))
    assert both._fields == ("ntk", "nngp") and torch.equal(both.ntk, blocked.compute(net, x).ntk)
    assert torch.equal(blocked.compute(net, x, get=["nngp"]).nngp, blocked.compute(net, x, get="nngp"))
    solved = blocked.cg(k, y, diag_reg=1e-3, get=("nngp", "ntk"))
    assert torch.equal(solved.ntk.solution, blocked.cg(k, y, diag_reg=1e-3, get="ntk").solution)
    models = blocked.falkon(net, x, y, n_centers=10, diag_reg=1e-4, get=("nngp", "ntk"))
    assert torch.equal(models.nngp(xt), blocked.falkon(net, x, y, n_centers=10, diag_reg=1e-4, get="nngp")(xt))
    gps = wn.predict.gp_inference(k, y, diag_reg=1e-3, get=("nngp", "ntkgp"))
    assert torch.equal(gps.ntkgp(net.kernel(xt, x)), wn.predict.gp_inference(k, y, 1e-3, get="ntkgp")(net.kernel(xt, x)))
    for bad, rule in (((), "must name at least one"), (("ntk", "ntk"), "names a kernel twice"),
                      (("ntk", "nnpg"), "get must be one of 'nngp', 'ntk' \\(got 'nnpg'\\)")):
        with pytest.raises(ParameterError, match=rule):
            blocked.cg(k, y, get=bad)
