"""Solvers on a Dask cluster (widenet.blocked._cluster): CG and FALKON with client= give the
single-machine results, keep the kernel's row blocks on the workers, survive a killed worker,
and refuse workers that cannot import widenet; the Nystrom preconditioner of CG."""

import os
import signal
import textwrap

import pytest
import torch

from blocked._helpers import _net
from widenet import blocked
from widenet.errors import ParameterError

D = torch.float64

# Dask warns when its workers' scratch directories are slow to create (a busy disk) or a
# dashboard port is taken; neither is about widenet, and the suite turns warnings into errors
pytestmark = [pytest.mark.filterwarnings("ignore:Creating scratch directories:UserWarning"),
              pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning")]

SLOW = textwrap.dedent("""
    import time
    def slow(a, b):
        time.sleep(0.05)
        return net.ntk(a, b, reproducible=True)
""")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as opened:
        yield opened


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=D), torch.randn(n, 2, generator=g, dtype=D)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _solves(solution, net, x, y, reg=1e-4, tol=1e-9):
    """``solution`` solves ``(K + reg mean diag K) a = y`` to ``tol`` (relative residual)."""
    k = net(x, None) if callable(net) and not hasattr(net, "ntk") else net.ntk(x)
    a = k + reg * k.diagonal().mean() * torch.eye(len(x), dtype=D)
    return float((a @ solution - y).norm() / y.norm()) < tol


def test_nystrom_preconditioning_cuts_the_iterations_and_keeps_the_solution():
    x, y = _data(240)
    net = _net()
    k = net.ntk(x)
    exact = torch.linalg.solve(k + 1e-4 * k.diagonal().mean() * torch.eye(240, dtype=D), y)
    plain = blocked.cg(k, y, 1e-4)
    pre = blocked.cg(net, y, 1e-4, x=x, precondition="nystrom", n_centers=100)
    assert _rel(plain.solution, exact) < 1e-8 and _rel(pre.solution, exact) < 1e-8
    assert pre.iterations < plain.iterations / 2, (pre.iterations, plain.iterations)


def test_cg_on_the_cluster_gives_the_local_solution(client, tmp_path):
    x, y = _data()
    net = _net()
    local = blocked.cg(net, y, 1e-4, x=x, reproducible=True)
    remote = blocked.cg(net, y, 1e-4, x=x, client=client, reproducible=True)
    # the same kernel bits; products over other row blocks round differently in the last place,
    # so the residual may cross tol one iteration apart
    assert abs(remote.iterations - local.iterations) <= 1
    assert _solves(remote.solution, net, x, y) and _rel(remote.solution, local.solution) < 1e-7
    pre = blocked.cg(net, y, 1e-4, x=x, client=client, reproducible=True, precondition="nystrom", n_centers=60)
    assert _solves(pre.solution, net, x, y) and pre.iterations < local.iterations / 2
    # a store on a disk the workers share: they read their row blocks from it
    store = blocked.compute(net, x, store=tmp_path / "k", get="ntk", reproducible=True)
    from_store = blocked.cg(store, y, 1e-4, client=client)
    assert _solves(from_store.solution, net, x, y) and _rel(from_store.solution, local.solution) < 1e-7


def test_falkon_on_the_cluster_gives_the_local_model(client, tmp_path):
    x, y = _data()
    net = _net()
    local = blocked.falkon(net, x, y, n_centers=30, diag_reg=1e-5)
    for options in ({}, {"cache": False}, {"store": str(tmp_path / "knm")}):
        remote = blocked.falkon(net, x, y, n_centers=30, diag_reg=1e-5, client=client, **options)
        assert _rel(remote.alpha, local.alpha) < 1e-8, options
        assert abs(remote.iterations - local.iterations) <= 1


def test_a_float32_kernel_stays_float32_on_the_workers(client):
    # FALKON's K_nM of float32 inputs, solved in float64: the workers keep float32 blocks (half
    # the memory) and convert them in each product, as the single-process solver streams them
    from widenet.blocked._cluster import ClusterRows

    x, y = _data()
    x32, net = x.float(), _net()
    local = blocked.falkon(net, x32, y, n_centers=30, diag_reg=1e-5)
    remote = blocked.falkon(net, x32, y, n_centers=30, diag_reg=1e-5, client=client)
    assert local.alpha.dtype == remote.alpha.dtype == D
    # the workers compute K_nM in other tiles than the local call, so float32 entries may differ
    # in their last place (eps 1.2e-7): the fits agree to that, not to float64's 1e-8 (1.6e-8 seen)
    assert _rel(remote.alpha, local.alpha) < 1e-6 and abs(remote.iterations - local.iterations) <= 1
    rows = ClusterRows.of_function(client, lambda a, b: net.ntk(a, b), x32, x32[:30], 40, D)
    try:
        kept = client.gather(rows.blocks)
        assert [b.dtype for b in kept] == [torch.float32] * 3
        v = torch.randn(30, 2, dtype=D)
        torch.testing.assert_close(torch.cat(kept), net.ntk(x32, x32[:30]), rtol=1e-6, atol=0)  # float32 tiles
        torch.testing.assert_close(rows.matmul(v), torch.cat(kept).double() @ v, rtol=1e-12, atol=0)
    finally:
        rows.release()
    # a float64 kernel under a float32 solver is kept narrow, in float32
    rows = ClusterRows.of_function(client, lambda a, b: net.ntk(a, b), x, x[:30], 40, torch.float32)
    try:
        assert {b.dtype for b in client.gather(rows.blocks)} == {torch.float32}
    finally:
        rows.release()


def test_a_killed_worker_changes_nothing(client):
    x, y = _data(80, seed=1)
    net = _net()
    namespace = {"__name__": "widenet_test_dynamic", "net": net}
    exec(SLOW, namespace)
    local = blocked.cg(namespace["slow"], y, 1e-4, x=x)
    victim = sorted(client.run(os.getpid).values())[0]
    killed = []

    def kill_at_iteration_3(iteration, residual):
        if iteration == 3 and not killed:
            os.kill(victim, signal.SIGKILL)  # its row blocks are lost: computed again elsewhere
            killed.append(iteration)

    remote = blocked.cg(namespace["slow"], y, 1e-4, x=x, client=client, callback=kill_at_iteration_3)
    assert killed
    assert abs(remote.iterations - local.iterations) <= 1
    assert _solves(remote.solution, namespace["slow"], x, y) and _rel(remote.solution, local.solution) < 1e-7


def test_bad_cluster_input_is_refused_before_any_work(client):
    x, y = _data(20)
    net = _net()
    with pytest.raises(ParameterError, match=r"with client, give the kernel as a Store .* a Tensor is already"):
        blocked.cg(net.ntk(x), y, client=client)
    with pytest.raises(ParameterError, match=r"precondition must be one of"):
        blocked.cg(net, y, 1e-3, x=x, precondition="jacobi")
    with pytest.raises(ParameterError, match=r"precondition='nystrom' needs a ridge"):
        blocked.cg(net, y, 0.0, x=x, precondition="nystrom")


def test_workers_that_cannot_import_widenet_are_named():
    from distributed import Client, LocalCluster

    def hide_widenet():
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name == "widenet" or name.startswith("widenet."):
                    raise ModuleNotFoundError(name)
                return None

        for name in [m for m in sys.modules if m == "widenet" or m.startswith("widenet.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, Blocker())

    x, y = _data(20)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as opened:
        opened.run(hide_widenet)
        with pytest.raises(ParameterError, match=r"the Dask workers tcp://\S+ cannot import widenet; install it"):
            blocked.cg(_net(), y, 1e-3, x=x, client=opened)
        with pytest.raises(ParameterError, match=r"cannot import widenet"):
            blocked.falkon(_net(), x, y, n_centers=5, client=opened)
