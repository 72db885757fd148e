"""The 1/n corrections of a deep tanh MLP (widenet.theory.finite_width) against Monte Carlo of
finite networks (widenet.theory.finite_width_samples) at widths 16 to 128.

Each panel shows a measured quantity times n, ``n (MC(n) - limit)`` for the means and
``n Cov`` for the fluctuations, against 1/n, with its standard error over batches of
networks, the weighted fit ``Q + c / n`` through the points, and the prediction Q at
``1/n = 0``. Writes finite_width_corrections.png into the output directory (default
./figures) and prints the table. About 1 minute on two cores.

Usage: python examples/finite_width_corrections.py [--out figures] [--samples 48000]
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import widenet as wn  # noqa: E402

D = torch.float64
X = torch.tensor([[1.0, 0.2, -0.5], [0.3, -1.1, 0.4]], dtype=D)
# (label, entry, how it is measured from the samples)
PANELS = [
    ("n (E[f_0 f_0] - K_00)", "nngp_correction", (0, 0)),
    ("n (E[Theta_00] - Theta_00)", "ntk_correction", (0, 0)),
    ("n x connected E[f_0 f_0 f_1 f_1]", "four_point", (0, 0, 1, 1)),
    ("n Var(Theta_00)", "ntk_variance", (0, 0, 0, 0)),
    ("n Cov(Theta_01, f_0 f_1)", "ntk_output_correlation", (0, 1, 0, 1)),
]


def measured(net, fw, n, samples, batches=12):
    """``{field: (batches, ...)}`` of the measured quantities times n (the readout's covariance
    given the last hidden layer stands in for the outputs' moments: no readout noise)."""
    runs = [wn.theory.finite_width_samples(net, X, n, samples // batches, seed=97 * n + b).estimates(fw)
            for b in range(batches)]
    return {name: torch.stack([r[name] for r in runs]) for _, name, _ in PANELS}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures")
    parser.add_argument("--samples", type=int, default=48000, help="networks per width")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    net = wn.Serial(wn.Dense(1, 1.2, 0.3), wn.Tanh(), wn.Dense(1, 1.3, 0.2), wn.Tanh(),
                    wn.Dense(1, 1.3, 0.2), wn.Tanh(), wn.Dense(1, 1.1, 0.1))
    fw = wn.theory.finite_width(net, X)
    widths = [16, 32, 64, 128]
    runs = {n: measured(net, fw, n, args.samples) for n in widths}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6), constrained_layout=True)
    print(f"{'quantity':>34} {'predicted':>10} {'fit at 1/n=0':>13} {'+-':>7}")
    inv = np.array([1 / n for n in widths])
    for ax, (label, name, entry) in zip(axes, PANELS):
        y = np.array([float(runs[n][name].mean(0)[entry]) for n in widths])
        se = np.array([float(runs[n][name].std(0)[entry]) / np.sqrt(len(runs[n][name])) for n in widths])
        design = np.stack([np.ones_like(inv), inv], 1)
        w = 1 / se**2
        cov = np.linalg.inv(design.T @ (w[:, None] * design))
        q, c = cov @ design.T @ (w * y)
        pred = float(getattr(fw, name)[entry])
        ax.errorbar(inv, y, yerr=se, fmt="o", color="C0", label="Monte Carlo")
        grid = np.linspace(0, inv.max() * 1.05, 50)
        ax.plot(grid, q + c * grid, color="C0", alpha=0.5, label="fit Q + c/n")
        ax.plot([0], [pred], "*", color="C3", markersize=14, label="finite_width")
        ax.axhline(pred, color="C3", ls="--", lw=0.8)
        ax.set_xlabel("1 / n")
        ax.set_title(label, fontsize=10)
        print(f"{label:>34} {pred:>10.4f} {q:>13.4f} {np.sqrt(cov[0, 0]):>7.4f}")
    axes[0].legend(fontsize=8)
    fig.suptitle("tanh MLP, three hidden layers: 1/n corrections against finite networks")
    fig.savefig(out / "finite_width_corrections.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
