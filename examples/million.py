"""An infinitely wide network trained on a million points, on one laptop-class machine.

Generates ``--n`` (default 10^6) MNIST-1D training points locally (Greydanus 2020's generator,
in chunks cached on disk, so an interrupted run resumes where it stopped), fits the
converged infinitely wide network (the NTK of a ReLU MLP, kernel ridge regression) to all of
them with FALKON (``widenet.blocked.falkon``: ``--centers`` Nystrom centers, the ``n x M``
kernel computed tile by tile within a memory budget), and reports the test accuracy, the
wall time of each stage and the peak memory, against the exact kernel ridge regression on a
``--exact`` subset (the same kernel and ridge; what one machine can solve directly), and
FALKON on that subset. With ``--cluster`` it runs the same FALKON fit again on a Dask
``LocalCluster`` of 2 workers (the ``n x M`` kernel then lives in the workers' memory, in row
blocks, and the solver's products run there), and checks that the two fits agree.

Usage: python examples/million.py [--n 1000000] [--centers 2000] [--exact 20000] [--cluster]
Measured times and memory are in the README (Performance: Scale); the data are generated once and cached.
"""

import argparse
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import widenet as wn
from widenet import blocked

CHUNK = 50_000


def _chunk(args):
    """One chunk of MNIST-1D samples with its own seed, cached as .npz (atomic rename)."""
    index, path = args
    if path.exists():
        return path
    from mnist1d.data import get_dataset_args, make_dataset

    spec = get_dataset_args()
    spec.num_samples, spec.train_split, spec.seed = CHUNK, 1.0 - 1e-9, 1000 + index
    data = make_dataset(spec)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:CHUNK]
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)[:CHUNK]
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)
    return path


def mnist1d(n: int, n_test: int, cache: Path, workers: int = 2):
    """``n`` training and ``n_test`` test points (the test chunk has a seed of its own)."""
    cache.mkdir(parents=True, exist_ok=True)
    chunks = -(-n // CHUNK)
    todo = [(i, cache / f"chunk-{i:04d}.npz") for i in range(chunks)] + [(9999, cache / "test.npz")]
    with ProcessPoolExecutor(workers) as pool:
        paths = list(pool.map(_chunk, todo))
    parts = [np.load(p) for p in paths[:-1]]
    x = np.concatenate([p["x"] for p in parts])[:n]
    y = np.concatenate([p["y"] for p in parts])[:n]
    test = np.load(paths[-1])
    mean, std = x.mean(0), x.std(0)
    scale = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    return scale(x), torch.from_numpy(y), scale(test["x"][:n_test]), torch.from_numpy(test["y"][:n_test])


def peak_gb() -> float:
    """This process's resident high-water mark (VmHWM; ru_maxrss would report a spawned Dask
    worker's parent's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions.argmax(1) == labels).double().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--centers", type=int, default=2000)
    parser.add_argument("--exact", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--ridge", type=float, default=1e-5)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--memory", default="2GB")
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--worker-memory", default="10GB", help="memory limit of each of the 2 Dask workers")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "widenet" / "mnist1d-million"))
    args = parser.parse_args()

    # the network of benchmarks/blocked_scale.py's FALKON part (3 hidden ReLU layers)
    net = wn.Serial(wn.Dense(512, 1.4, 0.1), wn.Relu(), wn.Dense(512, 1.4, 0.1), wn.Relu(),
                    wn.Dense(512, 1.4, 0.1), wn.Relu(), wn.Dense(10, 1.4, 0.1))
    start = time.perf_counter()
    x, y, x_test, y_test = mnist1d(args.n, args.test, Path(args.cache))
    print(f"data: {len(x)} training and {len(x_test)} test points of MNIST-1D (dimension {x.shape[1]}), "
          f"{time.perf_counter() - start:.0f} s (cached in {args.cache})")
    targets = torch.nn.functional.one_hot(y, 10).to(torch.float64) - 0.1

    # Exact kernel ridge regression on a subset: the reference one machine can solve directly.
    m = args.exact
    start = time.perf_counter()
    k = net.ntk(x[:m].double(), memory=args.memory)
    ridge = args.ridge * m  # the same ridge as FALKON's diag_reg * n
    alpha = torch.linalg.solve(k + ridge * torch.eye(m, dtype=k.dtype), targets[:m])
    del k
    exact_acc = accuracy(net.ntk(x_test.double(), x[:m].double(), memory=args.memory) @ alpha, y_test)
    print(f"exact kernel ridge regression on {m} points: test accuracy {exact_acc:.4f}, "
          f"{time.perf_counter() - start:.0f} s")

    def fit(n, client=None):
        start = time.perf_counter()
        model = blocked.falkon(net, x[:n], targets[:n], n_centers=args.centers, diag_reg=args.ridge,
                               tol=args.tol, memory=args.memory, client=client)
        fitted = time.perf_counter() - start
        acc = accuracy(model(x_test), y_test)
        return model, acc, fitted

    sub, sub_acc, sub_time = fit(m)
    print(f"FALKON with {args.centers} centers on the same {m} points: test accuracy {sub_acc:.4f}, "
          f"{sub_time:.0f} s, {sub.iterations} iterations")
    model, acc, seconds = fit(len(x))
    print(f"FALKON with {args.centers} centers on all {len(x)} points: test accuracy {acc:.4f}, "
          f"{seconds:.0f} s, {model.iterations} iterations; peak memory of this process {peak_gb():.1f} GB")

    if args.cluster:
        from distributed import Client, LocalCluster

        import dask

        # Each worker keeps its half of the float32 n x M kernel (4 GB at 10^6 points and 2000
        # centers) for the whole fit: Dask must not spill those blocks to disk (they are read in
        # every iteration), and the limit leaves room for a block's float64 copy in a product
        # and the tiles of a block being computed (args.memory each).
        with dask.config.set({"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}), \
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                             memory_limit=args.worker_memory) as cluster, Client(cluster) as client:
            remote, remote_acc, remote_time = fit(len(x), client)
            worker_peaks = client.run(peak_gb)
        gap = float((remote.alpha - model.alpha).norm() / model.alpha.norm())
        print(f"the same on a LocalCluster of 2 workers: test accuracy {remote_acc:.4f}, {remote_time:.0f} s, "
              f"{remote.iterations} iterations, coefficients {gap:.1e} from the single-process fit; peak memory "
              f"of the workers {', '.join(f'{v:.1f}' for v in worker_peaks.values())} GB, of this process "
              f"{peak_gb():.1f} GB")


if __name__ == "__main__":
    main()
