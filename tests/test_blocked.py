"""widenet.blocked: tiled kernels equal direct ones exactly; stores resume after SIGKILL and
refuse other computations; a Dask LocalCluster gives the local result, even when a worker dies."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import widenet as wn
from widenet import blocked, empirical
from widenet.errors import ParameterError, ShapeError

D = torch.float64


def _net():
    return wn.Serial(wn.Dense(64, W_std=1.4, b_std=0.1), wn.Relu(), wn.Dense(8, W_std=1.2, b_std=0.2), wn.Erf(),
                     wn.Dense(1))


def _cnn():
    return wn.Serial(wn.Conv(8, 3, padding="same"), wn.Relu(), wn.AvgPool(2), wn.Conv(8, 3, padding="valid"),
                     wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))


def _same(a, b, exact=True):
    """Bit for bit equal in reproducible mode, and in the default mode where both were computed
    on the same tiles (stores, resumes, Dask against local); in the default mode against a
    call on other blocks, equal to a few units in the last place: a matrix product's rounding
    depends on its shape (BLAS picks other kernels for other sizes), and torch computes the
    last elements of a run with scalar functions, which is also why the in-memory path
    differs by as much across its own block sizes."""
    if isinstance(a, wn.Kernel):
        for name in ("nngp", "ntk", "var1", "var2"):
            u, v = getattr(a, name), getattr(b, name)
            assert (u is None) == (v is None), name
            if u is not None:
                _same(u, v, exact)
        assert a.layout == b.layout and a.is_gaussian == b.is_gaussian and a.width == b.width
    else:
        assert a.shape == b.shape and a.dtype == b.dtype
        if exact:
            assert torch.equal(a, b), f"max difference {(a - b).abs().max().item()}"
        else:
            ulp = torch.finfo(a.dtype).eps * b.abs().max()
            assert (a - b).abs().max() <= 8 * ulp, f"max difference {(a - b).abs().max().item()} > 8 ulp"


@pytest.mark.parametrize("tile", [1, 4, 7, 23])
def test_tiles_equal_the_direct_kernel(tile):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(23, 5, generator=g, dtype=D)
    x2 = torch.randn(10, 5, generator=g, dtype=D)
    net = _net()
    # Reproducible mode: bit for bit, whatever the tile (odd sizes, rectangular, dividing nothing).
    _same(blocked.compute(net, x1, tile=tile, reproducible=True), net.kernel(x1, reproducible=True))
    _same(blocked.compute(net, x1, x2, tile=tile, reproducible=True), net.kernel(x1, x2, reproducible=True))
    assert torch.equal(blocked.compute(net, x1, tile=tile, get="ntk", reproducible=True),
                       net.ntk(x1, reproducible=True))
    # Default mode: bit for bit on the same tiles, a few ulp otherwise.
    _same(blocked.compute(net, x1, tile=tile), net.kernel(x1), exact=tile == 23)
    _same(blocked.compute(net, x1, x2, tile=tile), net.kernel(x1, x2), exact=tile == 23)
    _same(blocked.compute(net, x1, tile=tile, get="ntk"), net.ntk(x1), exact=tile == 23)
    _same(blocked.compute(lambda a, b: net.kernel(a, b), x1, x2, tile=tile, get="nngp"), net.nngp(x1, x2),
          exact=tile == 23)


def test_tiles_of_spatial_layouts_and_of_full_output_empirical_ntks():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 2, 6, 6, generator=g, dtype=D)
    cnn = _cnn()
    _same(blocked.compute(cnn, x, tile=4), cnn.kernel(x), exact=False)
    _same(blocked.compute(cnn, x, tile=4, reproducible=True), cnn.kernel(x, reproducible=True))
    # A kernel that keeps its spatial axes, "full" layout: mirrored tiles swap the two halves.
    conv = wn.Serial(wn.Conv(4, 3, padding="same"), wn.Relu(), wn.Conv(4, 3, padding="same"))
    direct = conv.kernel(x[:, :, :4, :4], layout="full")
    assert direct.layout == "full" and direct.nngp.ndim == 6
    full = lambda a, b: conv.kernel(a, b, layout="full")  # noqa: E731
    _same(blocked.compute(full, x[:, :, :4, :4], tile=4), direct, exact=False)
    _same(blocked.compute(full, x[:, :, :4, :4], tile=4, reproducible=True),
          conv.kernel(x[:, :, :4, :4], layout="full", reproducible=True))
    # An empirical full-output NTK (N, N, O, O): mirrored tiles swap the output axes too.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(D)
    xs = torch.randn(11, 5, dtype=D)
    fn = lambda a, b: empirical.ntk(model, a, b, outputs="full", method="jacobian")  # noqa: E731
    tiled = blocked.compute(fn, xs, tile=4)
    reference = empirical.ntk(model, xs, outputs="full", method="jacobian")
    torch.testing.assert_close(tiled, reference, rtol=1e-12, atol=1e-12)
    assert torch.equal(tiled, tiled.transpose(0, 1).transpose(2, 3))


def test_memory_sets_the_tile_and_the_store_matches_memory(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g, dtype=D)
    net = _net()
    # 2 arrays x 8 bytes per pair; a quarter of 8 kB is 2 kB: tiles of 11 inputs, none dividing 30.
    stored = blocked.compute(net, x, memory=8000, store=tmp_path / "k")
    assert stored.plan.tile == 11 and stored.complete
    _same(stored.load(), blocked.compute(net, x, memory=8000))
    _same(blocked.open_store(tmp_path / "k").load(), net.kernel(x), exact=False)
    assert stored["ntk"].chunks == (11, 11)


def test_store_refuses_another_computation_and_resumes_its_own(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 4, generator=g, dtype=D)
    net = _net()
    blocked.compute(net, x, tile=5, store=tmp_path / "k")
    with pytest.raises(blocked.StoreMismatchError, match="function"):
        blocked.compute(wn.Serial(wn.Dense(64, W_std=1.5), wn.Relu(), wn.Dense(1)), x, store=tmp_path / "k")
    with pytest.raises(blocked.StoreMismatchError, match="x1"):
        blocked.compute(net, x + 1, store=tmp_path / "k")
    with pytest.raises(blocked.StoreMismatchError, match="dtype"):
        blocked.compute(net, x.float(), store=tmp_path / "k")
    calls = []
    counted = lambda a, b: calls.append(1) or net.kernel(a, b)  # noqa: E731
    again = blocked.compute(counted, x, store=tmp_path / "k2", tile=5, key="net")
    assert len(calls) == 1 + 6  # the probe, then the 6 tiles on or above the diagonal of a 3 x 3 grid
    calls.clear()
    blocked.compute(counted, x, store=tmp_path / "k2", key="net")
    assert calls == []  # everything was done: nothing recomputed
    _same(again.load(), blocked.compute(net, x, tile=5))
    # overwrite discards the old store
    blocked.compute(net, x + 1, store=tmp_path / "k", overwrite=True)


KILLED = textwrap.dedent("""
    import sys, time, torch
    import widenet as wn
    from widenet import blocked
    net = wn.Serial(wn.Conv(4, 3, padding="same"), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    x = torch.randn(24, 1, 5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    def slow(a, b):
        time.sleep(0.15)
        return net.kernel(a, b)
    blocked.compute(slow, x, tile=3, store=sys.argv[1], key="slow conv net")
""")


def test_sigkill_loses_only_tiles_in_flight_and_resume_finishes_identically(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILLED)
    path = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(script), str(path)])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            time.sleep(0.1)
            try:
                done = len(blocked.open_store(path).finished())
            except Exception:  # the store is still being created
                done = 0
            if done >= 8:
                break
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted = blocked.open_store(path)
    finished = interrupted.finished()
    assert 8 <= len(finished) < len(interrupted.plan.tiles())
    # Every tile marked done is whole; tiles not done are recomputed and nothing else is.
    net = wn.Serial(wn.Conv(4, 3, padding="same"), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    x = torch.randn(24, 1, 5, 5, generator=torch.Generator().manual_seed(5), dtype=D)
    calls = []
    fn = lambda a, b: calls.append(1) or net.kernel(a, b)  # noqa: E731
    resumed = blocked.compute(fn, x, store=path, key="slow conv net")
    assert len(calls) == len(interrupted.plan.tiles()) - len(finished)
    assert not list(path.rglob("*.partial"))
    _same(resumed.load(), blocked.compute(net, x, tile=3))
    _same(resumed.load(), net.kernel(x), exact=False)


def test_progress_bar_reports_pairs_per_second(capsys):
    x = torch.randn(9, 3, dtype=D)
    blocked.compute(_net(), x, tile=2, progress=True)
    err = capsys.readouterr().err
    assert "kernel tiles" in err and "pairs/s" in err and "100%" in err


def test_bad_arguments_are_refused_before_work(tmp_path):
    x = torch.randn(4, 3, dtype=D)
    with pytest.raises(ParameterError, match="fn must be a widenet architecture or a callable"):
        blocked.compute(3, x)
    with pytest.raises(ParameterError, match="tile"):
        blocked.compute(_net(), x, tile=0)
    with pytest.raises(ParameterError, match="memory"):
        blocked.compute(_net(), x, memory="lots")
    with pytest.raises(wn.errors.NonFiniteInputError, match="x1"):
        blocked.compute(_net(), x.clone().fill_(float("nan")))
    with pytest.raises(ParameterError, match="same shape per input"):
        blocked.compute(_net(), x, torch.randn(4, 2, dtype=D))
    with pytest.raises(ParameterError, match="must return a widenet.Kernel or a tensor"):
        blocked.compute(lambda a, b: 1.0, x)
    with pytest.raises(ParameterError, match="no store"):
        blocked.open_store(tmp_path / "nothing")
    blocked.compute(_net(), x, tile=2, store=tmp_path / "s")


SLOW = textwrap.dedent("""
    import time
    def slow(a, b):
        time.sleep(0.1)
        return net.kernel(a, b)
""")


def test_dask_cluster_gives_the_local_result_even_when_a_worker_is_killed(tmp_path):
    import threading

    from distributed import Client, LocalCluster

    g = torch.Generator().manual_seed(6)
    x = torch.randn(26, 5, generator=g, dtype=D)
    x2 = torch.randn(9, 5, generator=g, dtype=D)
    net = _net()
    local = blocked.compute(net, x, tile=4)
    # A function defined outside any importable module travels to the workers by value.
    namespace = {"__name__": "widenet_test_dynamic", "net": net}
    exec(SLOW, namespace)
    slow = namespace["slow"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        _same(blocked.compute(net, x, tile=4, client=client), local)  # tiles come back through futures
        _same(blocked.compute(net, x, x2, tile=4, client=cluster.scheduler_address),  # a scheduler address
              blocked.compute(net, x, x2, tile=4))
        # Reproducible mode on the cluster, with tiles of another size: the one-call kernel.
        _same(blocked.compute(net, x, tile=5, client=client, reproducible=True), net.kernel(x, reproducible=True))
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        path = tmp_path / "store"
        state = {}

        def kill_when_started():
            deadline = time.time() + 60
            while time.time() < deadline:
                time.sleep(0.05)
                try:
                    done = len(blocked.open_store(path).finished())
                except Exception:
                    continue
                if done >= 4:
                    state["done_at_kill"] = done
                    os.kill(victim, signal.SIGKILL)
                    return

        killer = threading.Thread(target=kill_when_started)
        killer.start()
        stored = blocked.compute(slow, x, tile=4, client=client, store=path, key="slow net")
        killer.join()
        assert 4 <= state["done_at_kill"] < len(stored.plan.tiles())
        assert stored.complete
        _same(stored.load(), local)


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
