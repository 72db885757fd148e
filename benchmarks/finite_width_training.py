"""theory.finite_width's ddNTK means and trained_mean against Monte Carlo of finite networks.

ddNTKs: ``finite_width_samples(..., ddntk=True)`` measures both ddNTKs of every network
(nested forward modes); ``n * mean`` at two widths n and 2n is extrapolated in 1/n and
compared with ``FiniteWidth.ddntk``. Training: ``finite_width_training`` trains networks by
full-batch gradient descent (antithetic pairs) and ``n (mean - frozen)`` at each width is
compared with ``FiniteWidth.trained_mean``'s correction. Printed per configuration: the
largest deviation over the entries relative to the prediction's largest entry, the
standard error of that entry on the same scale, and the largest deviation in standard
errors.

    python benchmarks/finite_width_training.py            # about 15 minutes on two cores
    python benchmarks/finite_width_training.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import time

import torch

import widenet as wn

D = torch.float64
X = torch.tensor([[1.0, 0.2, -0.5], [0.3, -1.1, 0.4], [-0.7, 0.5, 0.9]], dtype=D)
X_TRAIN = torch.tensor([[1.0, 0.2, -0.5], [0.3, -1.1, 0.4], [-0.7, 0.5, 0.9], [0.8, 0.8, 0.1]], dtype=D)
Y = torch.tensor([0.8, -0.5, 0.3, -0.2], dtype=D)
X_TEST = torch.tensor([[0.5, 0.5, 0.5], [-0.2, 0.9, -0.8]], dtype=D)
ACTIVATIONS = {"tanh": wn.Tanh(), "erf": wn.Erf()}


def network(phi, hidden: int) -> wn.Serial:
    layers = [wn.Dense(1, 1.2, 0.3)]
    for _ in range(hidden):
        layers += [phi, wn.Dense(1, 1.5, 0.2)]
    return wn.Serial(*layers)


def report(label: str, pred: torch.Tensor, value: torch.Tensor, se: torch.Tensor) -> None:
    scale = float(pred.abs().max())
    dev = (value - pred).abs()
    worst = int(dev.argmax())
    print(f"{label:<44} max dev {float(dev.flatten()[worst]) / scale:6.1%} of max |pred| "
          f"(se {float(se.flatten()[worst]) / scale:5.1%}), max {float((dev / se).max()):4.1f} se")


def ddntk_study(phi_name: str, hidden: int, n: int, samples: int) -> None:
    net = network(ACTIVATIONS[phi_name], hidden)
    pred = wn.theory.finite_width(net, X).ddntk
    est = {}
    for width in (n, 2 * n):
        batches = [wn.theory.finite_width_samples(net, X, width, samples // 6, seed=11 * width + b, ddntk=True).ddntk
                   for b in range(6)]
        est[width] = [torch.stack([width * d[k].mean(0) for d in batches]) for k in range(2)]
    for k, name in enumerate(("ddI", "ddII")):
        a, b = est[n][k], est[2 * n][k]
        value = 2 * b.mean(0) - a.mean(0)
        se = (4 * b.var(0) / len(b) + a.var(0) / len(a)).sqrt()
        report(f"{name} {phi_name}, {hidden} hidden, n={n},{2 * n}", pred[k], value, se)


def training_study(phi_name: str, hidden: int, widths, samples: int, steps) -> None:
    net = network(ACTIVATIONS[phi_name], hidden)
    fw = wn.theory.finite_width(net, X_TRAIN)
    lr = 0.5 / float(torch.linalg.eigvalsh(fw.ntk).max())
    tm = fw.trained_mean(X_TEST, Y, lr=lr, t=steps)
    for n in widths:
        mc = wn.theory.finite_width_training(net, X_TRAIN, Y, X_TEST, n=n, samples=samples, lr=lr, t=steps, seed=n)
        report(f"trained {phi_name}, {hidden} hidden, n={n}, t={steps}", tm.correction,
               n * (mc.mean - tm.frozen), n * mc.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    start = time.time()
    if args.quick:
        ddntk_study("tanh", 2, 16, 600)
        training_study("tanh", 1, (64,), 4000, [10, 40])
    else:
        for phi in ACTIVATIONS:
            ddntk_study(phi, 2, 32, 3000)
        ddntk_study("tanh", 3, 32, 3000)
        training_study("tanh", 1, (128, 512), 40000, [10, 40, 100])
        training_study("tanh", 2, (64, 128, 256), 6000, [10, 40, 100])
        training_study("erf", 2, (64, 128), 6000, [10, 40, 100])
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
