"""Random-feature sketches against the exact kernel: time, peak memory and test accuracy of
NTK ridge regression on MNIST-1D (generated locally), the exact kernel (Cholesky) against
``wn.features`` + ``wn.feature_ridge`` at several feature counts, on the same training set.
Each configuration runs in its own process, so that its peak resident memory is its own.

Network: the NTK of a 3-hidden-layer ReLU MLP (W_std 1.4, b_std 0.1), float64 for the exact
kernel, float32 features (their error, 1/sqrt(n_features), is far above float32's).

Usage: python benchmarks/sketch.py [--n-train 20000] [--features 1024 4096 8192] [--ridge 1e-5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import widenet as wn
from nt.memory import peak_rss

NET = wn.Serial(wn.Dense(512, 1.4, 0.1), wn.Relu(), wn.Dense(512, 1.4, 0.1), wn.Relu(), wn.Dense(512, 1.4, 0.1),
                wn.Relu(), wn.Dense(10, 1.4, 0.1))


def mnist1d(n_train: int, n_test: int = 10000):
    data = wn.datasets.load("mnist1d")  # 4000 train / 1000 test at the package's defaults
    if n_train + n_test > len(data.x_train) + len(data.x_test):
        from mnist1d.data import get_dataset_args, make_dataset

        a = get_dataset_args()
        a.num_samples, a.train_split, a.seed = n_train + n_test, n_train / (n_train + n_test), 0
        raw = make_dataset(a)
        x, xt = torch.as_tensor(raw["x"], dtype=torch.float64), torch.as_tensor(raw["x_test"], dtype=torch.float64)
        mean, std = x.mean(0), x.std(0)
        return (x - mean) / std, torch.as_tensor(raw["y"]), (xt - mean) / std, torch.as_tensor(raw["y_test"])
    return data.x_train[:n_train], data.y_train[:n_train], data.x_test, data.y_test


def child(args) -> None:
    x, y, xt, yt = mnist1d(args.n_train)
    targets = torch.nn.functional.one_hot(y, 10).double() - 0.1
    start = time.perf_counter()
    if args.mode == "exact":
        k = NET.ntk(x)
        k.diagonal().add_(args.ridge * float(k.diagonal().mean()))
        alpha = torch.cholesky_solve(targets, torch.linalg.cholesky(k))
        del k
        pred = NET.ntk(xt, x) @ alpha
    else:
        n = int(args.mode)
        phi = wn.features(NET, x.float(), n, get="ntk", seed=0)
        pred = wn.feature_ridge(phi.double(), targets, wn.features(NET, xt.float(), n, get="ntk", seed=0).double(),
                                diag_reg=args.ridge)
    seconds = time.perf_counter() - start
    acc = float((pred.argmax(1) == yt).double().mean())
    print(f"{args.mode}\t{seconds:.2f}\t{acc:.4f}\t{peak_rss() / 2**20:.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--features", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--ridge", type=float, default=1e-5)
    parser.add_argument("--mode", default=None)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    rows = []
    for mode in ["exact"] + [str(f) for f in args.features]:
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--n-train", str(args.n_train), "--ridge",
                              str(args.ridge)], check=True, capture_output=True, text=True).stdout
        rows.append(out.strip().splitlines()[-1].split("\t"))
    exact_time, exact_acc = float(rows[0][1]), float(rows[0][2])
    print(f"NTK ridge regression on {args.n_train} MNIST-1D points, 10000 test points (2 cores)")
    print(f"{'method':>22} {'time (s)':>9} {'speed-up':>9} {'accuracy':>9} {'vs exact':>9} {'peak (MB)':>10}")
    for mode, seconds, acc, peak in rows:
        name = "exact kernel" if mode == "exact" else f"features, n={mode}"
        print(f"{name:>22} {float(seconds):9.1f} {exact_time / float(seconds):8.1f}x {float(acc):9.4f} "
              f"{float(acc) - exact_acc:+9.4f} {float(peak):10.0f}")


if __name__ == "__main__":
    main()
