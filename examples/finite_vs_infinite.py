"""Finite networks against their infinite-width limit, as the width grows, with widenet.theory.

1. Gradient descent (Lee et al. 2019; Golubeva et al. 2020): fully connected ReLU networks
   with two hidden layers, widths 64 to 2048, 3 seeds each, trained by full-batch gradient
   descent at half the critical rate for 300 steps on 32 of scikit-learn's digits (targets
   +-1 for even/odd digits). Against the infinite-width NTK prediction and against each
   network's own linearization: RMS output gaps on 64 test digits, the relative change of the
   NTK and of the parameters during training, and the distances of the NTK and of the readout
   NNGP at initialization from the infinite-width kernels, with fitted width exponents.
2. Bayesian networks (Hron et al. 2020): exact posterior samples of one-hidden-layer erf and
   ReLU networks (widths 1 to 64) on three points under Gaussian noise of variance 0.05, by
   rejection sampling from 10^6 prior draws per width, against the NNGP posterior at three
   test points: mean, variance and 1-D Wasserstein gaps, with the Monte Carlo floor that
   exact GP samples of the same size reach.

Writes, into the output directory (default ./figures):
  finite_width_gaps.png      every gap against width, with power-law fits
  exact_posterior.png        posterior densities by width against the NNGP, and the gaps
and prints the tables. About two minutes on two cores (113-116 s in two runs).

Usage: python examples/finite_vs_infinite.py [--out figures]
"""

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import widenet as wn  # noqa: E402
from widenet import theory  # noqa: E402

D = torch.float64


def relu_net(width):
    return wn.Serial(wn.Dense(width, W_std=math.sqrt(2), b_std=0.1), wn.Relu(),
                     wn.Dense(width, W_std=math.sqrt(2), b_std=0.1), wn.Relu(), wn.Dense(1, W_std=1.0, b_std=0.1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs, dtype=D)
    x = (x - x.mean(0)) / (x.std(0) + 1.0)
    y = torch.tensor(1.0 - 2.0 * (ys % 2), dtype=D)[:, None]
    study = theory.finite_width_study(relu_net, x[:32], y[:32], x[32:96], widths=[64, 128, 256, 512, 1024, 2048],
                                      steps=300, seeds=3, progress=True)
    print(f"gradient descent, learning rate {study.learning_rate:.3g} (half the critical rate), {study.steps} steps")
    print(study.table())
    fig = study.plot()
    fig.axes[0].set_title("two-hidden-layer ReLU network on digits: finite vs infinite width", fontsize=9)
    fig.savefig(out / "finite_width_gaps.png", dpi=120)

    xtr = torch.tensor([[-1.0], [0.3], [1.2]], dtype=D)
    ytr = torch.tensor([-0.6, 0.4, 0.9], dtype=D)
    xte = torch.tensor([[-0.3], [0.8], [2.0]], dtype=D)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained")
    for row, (name, act) in zip(axes, (("erf", wn.Erf()), ("ReLU", wn.Relu()))):
        def arch(width, act=act):
            return wn.Serial(wn.Dense(width, W_std=1.5, b_std=0.5), act, wn.Dense(1, W_std=1.5, b_std=0.2))

        post = theory.exact_posterior(arch, xtr, ytr, xte, widths=[1, 2, 4, 8, 16, 32, 64], noise_var=0.05,
                                      samples=1_000_000, progress=True)
        post.plot(row, point=0)
        row[0].set_title(f"one hidden layer, {name}: posterior of f(x*)", fontsize=9)
        print(f"\nexact posterior, one hidden {name} layer (accepted per width: {post.accepted.tolist()})")
        print(f"{'width':>8}" + "".join(f"{w:>9d}" for w in post.widths.tolist()) + "   floor   slope (widths <= 16)")
        for g, values in post.gaps.items():
            slope, err = post.slope(g, widths=[1, 2, 4, 8, 16])
            print(f"{g:>8.8}" + "".join(f"{float(v):9.4f}" for v in values)
                  + f"  {post.floor[g]:.4f}   {slope:+.2f} +- {err:.2f}")
    fig.savefig(out / "exact_posterior.png", dpi=120)
    print(f"\nfigures in {out.resolve()}")


if __name__ == "__main__":
    main()
