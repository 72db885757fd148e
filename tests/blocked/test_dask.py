"""widenet.blocked on Dask (widenet.blocked._dask): a LocalCluster gives the local result, even
when a worker dies."""

import os
import signal
import textwrap
import time

import torch

from blocked._helpers import _net, _same
from widenet import blocked

D = torch.float64


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
