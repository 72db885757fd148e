"""Learning-rate phases of gradient descent: the catapult mechanism (Lewkowycz et al. 2020),
with widenet.theory.

1. Lewkowycz et al.'s two-layer linear network f = v^T u x / sqrt(n) (width 512, one sample
   x = 1, y = 0) trained at eta lambda_0 = 1.5, 3, 3.9 and 4.2: monotone convergence below 2,
   a loss spike that drives the curvature below 2 / eta between 2 and 4, divergence above 4.
2. The measured maximal learning rate in units of 1 / lambda_0, by a sweep with bisection, for
   the linear network and for ReLU networks of 1, 2 and 3 hidden layers (width 1024, 16
   Gaussian inputs in 10 dimensions, labels sign(x_1)). The linear network's constant is
   exactly 4; deeper ReLU networks tolerate larger rates, about 12 / lambda_0 at three hidden
   layers as in the paper.

Writes, into the output directory (default ./figures):
  catapult_linear.png         loss and eta lambda_t over steps, one run per phase
  max_learning_rate.png       final loss and curvature against eta lambda_0, per network
and prints the table of measured eta_max lambda_0. About 2.5 minutes on two cores (156-157 s in two runs).

Usage: python examples/learning_rate_phases.py [--out figures] [--width 1024]
"""

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import widenet as wn  # noqa: E402
from widenet import theory  # noqa: E402

D = torch.float64


def relu_net(depth, width):
    layers = []
    for _ in range(depth):
        layers += [wn.Dense(width, W_std=math.sqrt(2), b_std=0.0), wn.Relu()]
    return wn.Serial(*layers, wn.Dense(1, W_std=1.0, b_std=0.0))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures")
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    linear = wn.Serial(wn.Dense(512, W_std=1.0, b_std=None), wn.Dense(1, W_std=1.0, b_std=None))
    uv = linear.module(1, seed=0, dtype=D)
    x1, y1 = torch.ones(1, 1, dtype=D), torch.zeros(1, 1, dtype=D)
    th = theory.learning_rate_thresholds(uv, x1)
    print(f"two-layer linear network, width 512: lambda_0 = {th.lambda0:.4f}, "
          f"critical 2/lambda_0 = {th.critical:.4f}, maximal 4/lambda_0 = {th.maximal:.4f}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for ratio in (1.5, 3.0, 3.9, 4.2):
        run = theory.catapult_probe(uv, x1, y1, ratio / th.lambda0, steps=120, curvature_every=2)
        run.plot(axes)
        print(f"  eta lambda_0 = {ratio:<4}: {run.phase:<9} peak loss {run.peak_loss:9.3g}, final loss "
              f"{run.final_loss:9.3g}, final eta lambda_t = {run.learning_rate * run.final_curvature:.3g}")
    axes[0].set_title("two-layer linear network: training loss")
    axes[1].set_title(r"curvature: catapults end below $\eta\lambda = 2$")
    axes[1].set_ylim(0, 5)
    fig.savefig(out / "catapult_linear.png", dpi=120)

    x = torch.randn(16, 10, dtype=D, generator=torch.Generator().manual_seed(0))
    y = torch.sign(x[:, :1])
    nets = {"linear (u, v)": (uv, x1, y1)}
    for depth in (1, 2, 3):
        nets[f"ReLU, {depth} hidden"] = (relu_net(depth, args.width).module(10, seed=0, dtype=D), x, y)
    ratios = [0.5 * i for i in range(1, 41)]
    fig, axes = plt.subplots(len(nets), 2, figsize=(10, 3.0 * len(nets)), layout="constrained")
    rows = []
    for (name, (model, xs, ys)), ax in zip(nets.items(), axes):
        sweep = theory.learning_rate_sweep(model, xs, ys, ratios, steps=300, refine=5, progress=True)
        sweep.plot(ax, label=name)
        ax[0].set_title(name, fontsize=9)
        rows.append((name, sweep))
    fig.savefig(out / "max_learning_rate.png", dpi=120)
    print(f"\n{'network':<18} {'lambda_0':>9} {'first catapult':>15} {'eta_max lambda_0':>17}")
    for name, sweep in rows:
        print(f"{name:<18} {sweep.lambda0:9.4f} {sweep.critical_ratio:15.2f} {sweep.max_ratio:17.3f}")
    print(f"\nfigures in {out.resolve()}")


if __name__ == "__main__":
    main()
