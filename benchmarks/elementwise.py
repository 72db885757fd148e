"""Elementwise nonlinearities: Tanh's erf-mixture rule against ReLU's closed form and against
Gauss-Hermite quadrature (``Elementwise(torch.tanh)``, the rule Tanh used before), in time at
equal size and depth, and in accuracy against adaptive two-dimensional integration (scipy's
QUADPACK, nested) at pre-activation variances from 1e-2 to 1e4.

Usage: python benchmarks/elementwise.py [--n 300,1000] [--depth 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch

import widenet as wn


def _time(net, x, repeats):
    net.kernel(x[:8])  # warm-up (and the fused extension's build)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        net.kernel(x)
        best = min(best, time.perf_counter() - start)
    return best


def speed(ns, depth, repeats):
    print(f"NNGP+NTK, Dense(512) -> phi, depth {depth}, inputs of 64 features, float64, "
          f"{torch.get_num_threads()} threads; best of {repeats}")
    print(f"{'N':>6} {'ReLU s':>9} {'Tanh s':>9} {'Tanh/ReLU':>10} {'GH-96 s':>9} {'GH-96/Tanh':>11}")
    for n in ns:
        x = torch.randn(n, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        times = {}
        for name, phi in (("relu", wn.Relu()), ("tanh", wn.Tanh()), ("gh", wn.Elementwise(torch.tanh))):
            layers = [layer for _ in range(depth) for layer in (wn.Dense(512, 1.5, 0.05), phi)]
            net = wn.Serial(*layers, wn.Dense(1))
            if name == "gh" and n > 300:
                times[name] = math.nan  # minutes: the point is made at the smaller size
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                times[name] = _time(net, x, 1 if name == "gh" else repeats)
        print(f"{n:>6} {times['relu']:>9.4f} {times['tanh']:>9.4f} {times['tanh'] / times['relu']:>9.1f}x "
              f"{times['gh']:>9.2f} {times['gh'] / times['tanh']:>10.0f}x")


def accuracy():
    from scipy.integrate import IntegrationWarning, quad

    def nested(q1, q2, rho, g):
        s, sq1, sq2 = math.sqrt(max(1 - rho * rho, 0.0)), math.sqrt(q1), math.sqrt(q2)

        def inner(z1):
            m, sd = sq2 * rho * z1, sq2 * s
            lo, hi = m - 12 * sd, m + 12 * sd
            return quad(lambda y: g(y) * math.exp(-0.5 * ((y - m) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)),
                        lo, hi, points=[0.0] if lo < 0 < hi else None, epsabs=1e-15, epsrel=1e-10, limit=400)[0]

        return quad(lambda x: g(x) * inner(x / sq1) * math.exp(-0.5 * x * x / q1) / (sq1 * math.sqrt(2 * math.pi)),
                    -12 * sq1, 12 * sq1, points=[0.0], epsabs=1e-15, epsrel=1e-10, limit=400)[0]

    print("\nrelative error of T = E[tanh(u) tanh(v)], correlation 0.9, against adaptive integration")
    print(f"{'variance':>9} {'Tanh (mixture)':>15} {'GH degree 96':>13}")
    for q in (0.01, 0.1, 1.0, 10.0, 40.0, 100.0, 1000.0, 10000.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IntegrationWarning)
            exact = nested(q, q, 0.9, math.tanh)
        qt = torch.tensor(q, dtype=torch.float64)
        errs = []
        for layer in (wn.Tanh(), wn.Elementwise(torch.tanh)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t, _ = layer.dual(qt, qt, 0.9 * qt)
            errs.append(abs(float(t) / exact - 1))
        print(f"{q:>9g} {errs[0]:>15.1e} {errs[1]:>13.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="300,1000")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    speed([int(n) for n in args.n.split(",")], args.depth, args.repeats)
    accuracy()


if __name__ == "__main__":
    main()
