"""Scale: widenet.blocked's tiled path against the in-memory one, a Dask LocalCluster with two
single-threaded workers against one, and FALKON on 100,000 MNIST-1D samples against exact
kernel ridge regression on the largest subset that fits in memory. Each part runs in its own
process, so that its peak resident memory is its own.

Parts (--parts):
  tiled   pooled CNN kernel (3x [Conv 3x3 "same" + ReLU] + GlobalAvgPool + Dense, 1x8x8
          inputs, N=300, float64): net.kernel in memory vs blocked.compute with tiles of 100
          inputs, in memory and into a zarr store; throughput in kernel pairs per second. Then
          the same in reproducible mode with tiles of 97, which must equal one call exactly.
  dask    the same kernel over a LocalCluster of 1 and of 2 single-threaded workers (tiles of
          50 inputs); the speedup of 2 workers over 1.
  falkon  NTK regression with a 3-layer ReLU network on MNIST-1D (generated locally with
          mnist1d): FALKON on 100,000 training samples (M centers) against exact KRR (Cholesky)
          on the largest subset that fits in memory; time, peak memory, test accuracy.

Usage: python benchmarks/blocked_scale.py [--parts tiled dask falkon] [--n-train 100000] [--centers 12000]
       [--exact 20000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# The Neural Tangents bridge and the memory helper live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import widenet as wn
from widenet import blocked
from nt.memory import peak_rss

D = torch.float64


def cnn():
    layers = []
    for _ in range(3):
        layers += [wn.Conv(32, 3, padding="same", W_std=1.4, b_std=0.1), wn.Relu()]
    return wn.Serial(*layers, wn.GlobalAvgPool(), wn.Dense(10, W_std=1.4, b_std=0.1))


def digits_images(n):
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:n], dtype=D).reshape(n, 1, 8, 8)
    return (x - x.mean()) / x.std()


def peak_mb():
    return peak_rss() / 2**20


def part_tiled(args):
    net, x = cnn(), digits_images(300)
    pairs = 300 * 301 / 2
    net.kernel(x[:8])  # warm-up (and the one-time imports of the store's libraries)
    with tempfile.TemporaryDirectory() as tmp:
        blocked.compute(net, x[:8], tile=4, store=Path(tmp) / "warm", progress=False)
    out = {}
    start = time.perf_counter()
    direct = net.kernel(x)
    out["in memory"] = time.perf_counter() - start
    start = time.perf_counter()
    tiled = blocked.compute(net, x, tile=100, progress=False)
    out["tiled, in memory"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stored = blocked.compute(net, x, tile=100, store=Path(tmp) / "k", progress=False)
        out["tiled, zarr store"] = time.perf_counter() - start
        diff = float((stored.load().ntk - direct.ntk).abs().max() / direct.ntk.abs().max())
    diff = max(diff, float((tiled.ntk - direct.ntk).abs().max() / direct.ntk.abs().max()))
    # Reproducible mode: tiles of a size that divides nothing must equal the one-call kernel.
    start = time.perf_counter()
    r_direct = net.kernel(x, reproducible=True)
    out["reproducible, in memory"] = time.perf_counter() - start
    start = time.perf_counter()
    r_tiled = blocked.compute(net, x, tile=97, reproducible=True, progress=False)
    out["reproducible, tiles of 97"] = time.perf_counter() - start
    identical = torch.equal(r_tiled.ntk, r_direct.ntk) and torch.equal(r_tiled.nngp, r_direct.nngp)
    print(f"pooled CNN kernel, N=300, float64, {torch.get_num_threads()} threads (pairs/s; ratio to in memory "
          f"in the same mode)")
    for name, seconds in out.items():
        base = out["reproducible, in memory" if name.startswith("reproducible") else "in memory"]
        print(f"  {name:26s} {seconds:8.2f} s {pairs / seconds:10.0f} pairs/s {base / seconds:6.2f}x")
    print(f"  max relative difference of the NTKs (default mode, tiles against one call): {diff:.1e}")
    print(f"  reproducible mode, tiles of 97 identical to one call: {identical}; "
          f"reproducible against default: {out['in memory'] / out['reproducible, in memory']:.2f}x the speed")
    print(f"  peak {peak_mb():.0f} MB")


def part_dask(args):
    from distributed import Client, LocalCluster

    net, x = cnn(), digits_images(300)
    times = {}
    results = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            blocked.compute(net, x[:20], tile=10, client=client, progress=False)  # warm the workers up
            start = time.perf_counter()
            results[workers] = blocked.compute(net, x, tile=50, client=client, progress=False)
            times[workers] = time.perf_counter() - start
    same = torch.equal(results[1].ntk, results[2].ntk) and torch.equal(results[1].nngp, results[2].nngp)
    print("pooled CNN kernel, N=300, float64, Dask LocalCluster of single-threaded workers, tiles of 50")
    for workers, seconds in times.items():
        print(f"  {workers} worker(s): {seconds:7.2f} s")
    print(f"  speedup of 2 workers over 1: {times[1] / times[2]:.2f}x; results identical: {same}")


def mnist1d(n_train, n_test, seed=0):
    from mnist1d.data import get_dataset_args, make_dataset

    a = get_dataset_args()
    a.num_samples = n_train + n_test
    a.train_split = n_train / (n_train + n_test)
    a.seed = seed
    data = make_dataset(a)
    x, xt = np.asarray(data["x"], float), np.asarray(data["x_test"], float)
    mean, std = x.mean(0), x.std(0) + 1e-12
    y = torch.nn.functional.one_hot(torch.as_tensor(data["y"]), 10).to(D) - 0.1
    return torch.tensor((x - mean) / std, dtype=D), y, torch.tensor((xt - mean) / std, dtype=D), \
        torch.as_tensor(data["y_test"])


def part_falkon(args):
    net = wn.Serial(wn.Dense(512, W_std=1.4, b_std=0.1), wn.Relu(), wn.Dense(512, W_std=1.4, b_std=0.1), wn.Relu(),
                    wn.Dense(512, W_std=1.4, b_std=0.1), wn.Relu(), wn.Dense(10, W_std=1.4, b_std=0.1))
    start = time.perf_counter()
    x, y, xt, yt = mnist1d(args.n_train, 10000)
    print(f"MNIST-1D generated: {len(x)} train, {len(xt)} test in {time.perf_counter() - start:.0f} s")
    lam = 1e-5
    accuracy = lambda p: float((p.argmax(1) == yt).double().mean())  # noqa: E731
    if args.part_falkon_mode == "falkon":
        start = time.perf_counter()
        fit = blocked.falkon(net, x, y, n_centers=args.centers, diag_reg=lam, memory="6GB", seed=0)
        fitted = time.perf_counter() - start
        pred = fit(xt)
        total = time.perf_counter() - start
        print(f"  FALKON n={len(x)}, M={args.centers}: fit {fitted:.0f} s ({fit.iterations} CG iterations), "
              f"with test predictions {total:.0f} s; test accuracy {accuracy(pred):.4f}; peak {peak_mb():.0f} MB")
    else:
        n = args.exact
        start = time.perf_counter()
        k = net.ntk(x[:n])
        k.diagonal().add_(lam * n)
        alpha = torch.cholesky_solve(y[:n], torch.linalg.cholesky(k))
        del k
        pred = net.ntk(xt, x[:n]) @ alpha
        total = time.perf_counter() - start
        print(f"  exact KRR n={n}: {total:.0f} s; test accuracy {accuracy(pred):.4f}; peak {peak_mb():.0f} MB")
        sub = blocked.falkon(net, x[:n], y[:n], n_centers=args.centers, diag_reg=lam, memory="4GB", seed=0)
        print(f"  FALKON on the same n={n}, M={args.centers}: test accuracy {accuracy(sub(xt)):.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["tiled", "dask", "falkon"])
    parser.add_argument("--n-train", type=int, default=100000)
    parser.add_argument("--centers", type=int, default=12000)
    parser.add_argument("--exact", type=int, default=20000)
    parser.add_argument("--child", default=None)
    parser.add_argument("--part-falkon-mode", default="falkon")
    args = parser.parse_args()
    if args.child:
        {"tiled": part_tiled, "dask": part_dask, "falkon": part_falkon}[args.child](args)
        return
    for part in args.parts:
        modes = ["exact", "falkon"] if part == "falkon" else [None]
        for mode in modes:
            extra = [] if mode is None else ["--part-falkon-mode", mode]
            subprocess.run([sys.executable, __file__, "--child", part, "--n-train", str(args.n_train),
                            "--centers", str(args.centers), "--exact", str(args.exact)] + extra, check=True)


if __name__ == "__main__":
    main()
