"""Random-feature sketches against the exact kernel at equal test error: time, peak memory and
test accuracy of NTK ridge regression on MNIST-1D (generated locally, the training points of
examples/million.py's cache) or scikit-learn's digits, the exact kernel (its N x N matrix and
Cholesky) against ``NTKRegressor(solver="features")`` (``wn.features``, ``Phi^T Phi``
accumulated over row chunks, ridge regression in feature space) at several feature counts and
training-set sizes, and against Nystrom features (``wn.features(..., method="nystrom")`` with
the training inputs as landmarks, then ``wn.feature_ridge``) with as many features. Each
configuration runs in its own process, so that its peak resident memory is its own.

The exact kernel runs up to ``--exact-max`` points (40,000: a 12.8 GB float64 matrix; 10^5
points would need 80 GB). Beyond that the table gives its cost extrapolated from the measured
runs (time = a N^2 + b N^3, fitted by non-negative least squares; labelled "extrapolated", never measured).

Network: the NTK of a 3-hidden-layer ReLU MLP (W_std 1.4, b_std 0.1), float64 throughout.

Usage: python benchmarks/sketch.py [--n-train 10000 20000 40000 100000] [--features 1024 2048 4096]
                                   [--nystrom 2048 4096] [--exact-max 40000] [--ridge 1e-5]
       python benchmarks/sketch.py --dataset digits   (1297 training and 500 test points)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import widenet as wn
from nt.memory import peak_rss
from widenet.estimators import NTKRegressor

NET = wn.Serial(wn.Dense(512, 1.4, 0.1), wn.Relu(), wn.Dense(512, 1.4, 0.1), wn.Relu(), wn.Dense(512, 1.4, 0.1),
                wn.Relu(), wn.Dense(10, 1.4, 0.1))
CACHE = Path.home() / ".cache" / "widenet" / "mnist1d-million"


def mnist1d(n_train: int):
    """The first ``n_train`` training points and the 10,000 test points of examples/million.py
    (its chunks are generated and cached on first use), standardized, float64."""
    sys.path.insert(0, str(ROOT / "examples"))
    import million  # its chunk generator runs in worker processes: importable by name

    x, y, xt, yt = million.mnist1d(n_train, 10000, CACHE)
    return x.double(), y, xt.double(), yt


def digits(n_train: int):
    """scikit-learn's digits (1797 8x8 images as 64 features, scaled to [0, 1]), shuffled by a
    fixed seed: the first ``n_train`` (at most 1297) for training, the last 500 for testing."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x = torch.from_numpy(data.data[order] / 16.0)
    y = torch.from_numpy(data.target[order]).long()
    return x[:min(n_train, 1297)], y[:min(n_train, 1297)], x[1297:], y[1297:]


def load(dataset: str, n_train: int):
    return digits(n_train) if dataset == "digits" else mnist1d(n_train)


def child(args) -> None:
    x, y, xt, yt = load(args.dataset, args.n)
    targets = torch.nn.functional.one_hot(y, 10).double() - 0.1
    torch.set_num_threads(2)
    # the ridge of examples/million.py, ridge * N (FALKON's normalization), as a fraction of the
    # kernel's mean diagonal (estimated on 1000 points, outside the timing)
    reg = args.ridge * args.n / float(NET.ntk(x[:1000]).diagonal().mean())
    start = time.perf_counter()
    if args.mode == "exact":
        k = NET.ntk(x)
        k.diagonal().add_(reg * float(k.diagonal().mean()))
        alpha = torch.cholesky_solve(targets, torch.linalg.cholesky(k))
        del k
        pred = torch.cat([NET.ntk(xt[s:s + 2000], x) @ alpha for s in range(0, len(xt), 2000)])
    elif args.mode.startswith("nystrom"):
        m = int(args.mode[len("nystrom"):])
        phi = wn.features(NET, x, m, method="nystrom", landmarks=x)
        phi_test = wn.features(NET, xt, m, method="nystrom", landmarks=x)
        # the same absolute ridge: feature_ridge's diag_reg is relative to the mean |Phi_i|^2
        reg_phi = reg * float(NET.ntk(x[:1000]).diagonal().mean()) / float(phi.pow(2).sum(1).mean())
        pred = wn.feature_ridge(phi, targets, phi_test, diag_reg=reg_phi)
    else:
        model = NTKRegressor(NET, diag_reg=reg, solver="features", n_features=int(args.mode))
        pred = torch.from_numpy(model.fit(x.numpy(), targets.numpy()).predict(xt.numpy()))
    seconds = time.perf_counter() - start
    acc = float((pred.argmax(1) == yt).double().mean())
    print(f"{args.mode}\t{args.n}\t{seconds:.2f}\t{acc:.4f}\t{peak_rss() / 2**20:.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, nargs="+", default=[10000, 20000, 40000, 100000])
    parser.add_argument("--features", type=int, nargs="*", default=[1024, 2048, 4096])
    parser.add_argument("--nystrom", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--dataset", choices=["mnist1d", "digits"], default="mnist1d")
    parser.add_argument("--exact-max", type=int, default=40000)
    parser.add_argument("--ridge", type=float, default=1e-5)
    parser.add_argument("--mode", default=None)
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    if args.dataset == "digits":
        args.n_train, args.features = [1297], [f for f in args.features if f <= 4096]
        args.nystrom = [f for f in args.nystrom if f <= 1297] or [256, 1024]
    xt = load(args.dataset, max(args.n_train))[2]  # generate and cache the data once, before any timing
    print(f"NTK ridge regression on {args.dataset}, {len(xt)} test points, ridge {args.ridge:g} N "
          f"(as examples/million.py), {torch.get_num_threads()} threads")
    print(f"{'method':>20} {'N':>7} {'time (s)':>9} {'accuracy':>9} {'peak (MB)':>10}")
    rows = []
    for n in args.n_train:
        modes = ((["exact"] if n <= args.exact_max else []) + [str(f) for f in args.features]
                 + [f"nystrom{f}" for f in args.nystrom if f < n])
        for mode in modes:
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--n", str(n), "--ridge", str(args.ridge),
                                  "--dataset", args.dataset], check=True, capture_output=True, text=True).stdout
            mode, n_, seconds, acc, peak = out.strip().splitlines()[-1].split("\t")
            rows.append((mode, int(n_), float(seconds), float(acc), float(peak)))
            name = ("exact kernel" if mode == "exact" else f"Nystrom, m={mode[7:]}" if mode.startswith("nystrom")
                    else f"features, m={mode}")
            print(f"{name:>20} {n:>7} {float(seconds):9.1f} {float(acc):9.4f} {float(peak):10.0f}", flush=True)

    exact = {n: (s, a) for mode, n, s, a, _ in rows if mode == "exact"}
    if len(exact) >= 2:
        ns = np.array(sorted(exact), dtype=float)
        from scipy.optimize import nnls  # a, b >= 0: two noisy timings must not extrapolate below zero

        coef, _ = nnls(np.stack([ns**2, ns**3], 1), np.array([exact[n][0] for n in sorted(exact)]))
        print("\nat equal size: speed-up of the features over the exact kernel, accuracy difference")
        for mode, n, seconds, acc, _ in rows:
            if mode == "exact":
                continue
            if n in exact:
                ref, label = exact[n][0], "measured"
                diff = f"{acc - exact[n][1]:+.4f}"
            else:
                ref, label = float(coef[0] * n**2 + coef[1] * n**3), "extrapolated"
                diff = "   n/a"
            print(f"  N={n:>7} {mode:>11}: exact {ref:9.0f} s ({label}), features {seconds:7.1f} s, "
                  f"{ref / seconds:6.1f}x, accuracy {diff}")


if __name__ == "__main__":
    main()
