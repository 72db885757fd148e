"""theory.finite_width against Monte Carlo of finite networks: every 1/n quantity, for several
activations, depths and widths.

For each configuration, ``finite_width_samples`` draws ``--samples`` networks per width; the
measured ``n (MC(n) - limit)`` (or ``n Cov`` for the fluctuations) is fitted as
``Q + c / n`` over the widths by weighted least squares, and ``Q`` is compared with the
prediction. Printed per quantity: the largest deviation over the tensor's entries relative to
the prediction's largest entry, the standard error of that entry relative to the same scale,
and the largest deviation in standard errors over all entries.

    python benchmarks/finite_width_mc.py                       # tanh, erf, gelu; depths 2-4; widths 32-128
    python benchmarks/finite_width_mc.py --quick               # one configuration, for a smoke run

Kinked activations (ReLU) are not covered: finite_width refuses them.
"""

from __future__ import annotations

import argparse
import time

import torch

import widenet as wn

D = torch.float64
X = torch.tensor([[1.0, 0.2, -0.5], [0.3, -1.1, 0.4], [-0.7, 0.5, 0.9]], dtype=D)
ACTIVATIONS = {"tanh": wn.Tanh(), "erf": wn.Erf(), "gelu": wn.Gelu()}


def network(phi, hidden: int) -> wn.Serial:
    layers = [wn.Dense(1, 1.2, 0.3)]
    for _ in range(hidden):
        layers += [phi, wn.Dense(1, 1.25, 0.2)]
    return wn.Serial(*layers)


QUANTITIES = ("nngp_correction", "four_point", "ntk_correction", "ntk_variance", "ntk_output_correlation")


def measure(net, n: int, samples: int, batches: int, fw, seed: int) -> dict:
    """n (MC - limit) or n Cov per batch, ``{quantity: (batches, ...)}``."""
    runs = [wn.theory.finite_width_samples(net, X, n, samples // batches, seed=seed + b).estimates(fw)
            for b in range(batches)]
    return {k: torch.stack([r[k] for r in runs]) for k in QUANTITIES}


def extrapolate(by_width: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares of ``y(n) = Q + c / n`` per entry; returns Q and its error."""
    widths = sorted(by_width)
    means = torch.stack([by_width[n].mean(0) for n in widths])
    var = torch.stack([by_width[n].var(0) / len(by_width[n]) for n in widths])
    design = torch.tensor([[1.0, 1.0 / n] for n in widths], dtype=D)
    flat_m, flat_v = means.reshape(len(widths), -1), var.reshape(len(widths), -1).clamp_min(1e-300)
    q, se = torch.empty(flat_m.shape[1], dtype=D), torch.empty(flat_m.shape[1], dtype=D)
    for j in range(flat_m.shape[1]):
        w = 1 / flat_v[:, j]
        normal = design.T @ (w[:, None] * design)
        cov = torch.linalg.inv(normal)
        q[j] = (cov @ design.T @ (w * flat_m[:, j]))[0]
        se[j] = cov[0, 0].sqrt()
    shape = means.shape[1:]
    return q.reshape(shape), se.reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", default="tanh,erf,gelu")
    parser.add_argument("--depths", default="2,3,4", help="numbers of hidden layers")
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--samples", type=int, default=40000, help="networks per width")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.activations, args.depths, args.widths, args.samples = "tanh", "2", "16,32", 4000
    widths = [int(w) for w in args.widths.split(",")]
    print(f"{'activation':>10} {'hidden':>6} {'quantity':>24} {'max |dev| / scale':>18} {'se / scale':>11} "
          f"{'max |dev|/se':>12} {'time':>6}")
    for name in args.activations.split(","):
        phi = ACTIVATIONS[name]
        for hidden in (int(d) for d in args.depths.split(",")):
            net = network(phi, hidden)
            start = time.perf_counter()
            fw = wn.theory.finite_width(net, X)
            pred = {k: getattr(fw, k) for k in QUANTITIES}
            runs = {n: measure(net, n, args.samples, args.batches, fw, seed=1000 * n + 10 * hidden) for n in widths}
            seconds = time.perf_counter() - start
            for k, p in pred.items():
                q, se = extrapolate({n: runs[n][k] for n in widths})
                scale = float(p.abs().max())
                dev = (q - p).abs()
                worst = int(dev.flatten().argmax())
                print(f"{name:>10} {hidden:>6} {k:>24} {float(dev.max()) / scale:>18.3f} "
                      f"{float(se.flatten()[worst]) / scale:>11.3f} {float((dev / se).max()):>12.2f} {seconds:>5.0f}s")


if __name__ == "__main__":
    main()
