"""Random-feature sketches against the exact kernel at equal test error: time, peak memory and
test accuracy of NTK ridge regression on MNIST-1D (generated locally, the training points of
examples/million.py's cache), the exact kernel (its N x N matrix and Cholesky) against
``NTKRegressor(solver="features")`` (``wn.features``, ``Phi^T Phi`` accumulated over row chunks,
ridge regression in feature space) at several feature counts and training-set sizes. Each
configuration runs in its own process, so that its peak resident memory is its own.

The exact kernel runs up to ``--exact-max`` points (40,000: a 12.8 GB float64 matrix; 10^5
points would need 80 GB). Beyond that the table gives its cost extrapolated from the measured
runs (time = a N^2 + b N^3, fitted by least squares; labelled "extrapolated", never measured).

Network: the NTK of a 3-hidden-layer ReLU MLP (W_std 1.4, b_std 0.1), float64 throughout.

Usage: python benchmarks/sketch.py [--n-train 10000 20000 40000 100000] [--features 1024 2048 4096]
                                   [--exact-max 40000] [--ridge 1e-5]
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


def child(args) -> None:
    x, y, xt, yt = mnist1d(args.n)
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
    else:
        model = NTKRegressor(NET, diag_reg=reg, solver="features", n_features=int(args.mode))
        pred = torch.from_numpy(model.fit(x.numpy(), targets.numpy()).predict(xt.numpy()))
    seconds = time.perf_counter() - start
    acc = float((pred.argmax(1) == yt).double().mean())
    print(f"{args.mode}\t{args.n}\t{seconds:.2f}\t{acc:.4f}\t{peak_rss() / 2**20:.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, nargs="+", default=[10000, 20000, 40000, 100000])
    parser.add_argument("--features", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--exact-max", type=int, default=40000)
    parser.add_argument("--ridge", type=float, default=1e-5)
    parser.add_argument("--mode", default=None)
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    mnist1d(max(args.n_train))  # generate and cache the data once, before any timing
    print(f"NTK ridge regression on MNIST-1D, 10000 test points, ridge {args.ridge:g} N (as examples/million.py), "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':>20} {'N':>7} {'time (s)':>9} {'accuracy':>9} {'peak (MB)':>10}")
    rows = []
    for n in args.n_train:
        for mode in (["exact"] if n <= args.exact_max else []) + [str(f) for f in args.features]:
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--n", str(n), "--ridge", str(args.ridge)],
                                 check=True, capture_output=True, text=True).stdout
            mode, n_, seconds, acc, peak = out.strip().splitlines()[-1].split("\t")
            rows.append((mode, int(n_), float(seconds), float(acc), float(peak)))
            name = "exact kernel" if mode == "exact" else f"features, m={mode}"
            print(f"{name:>20} {n:>7} {float(seconds):9.1f} {float(acc):9.4f} {float(peak):10.0f}", flush=True)

    exact = {n: (s, a) for mode, n, s, a, _ in rows if mode == "exact"}
    if len(exact) >= 2:
        ns = np.array(sorted(exact), dtype=float)
        coef, *_ = np.linalg.lstsq(np.stack([ns**2, ns**3], 1), np.array([exact[n][0] for n in sorted(exact)]),
                                   rcond=None)
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
            print(f"  N={n:>7} m={mode:>5}: exact {ref:9.0f} s ({label}), features {seconds:7.1f} s, "
                  f"{ref / seconds:6.1f}x, accuracy {diff}")


if __name__ == "__main__":
    main()
