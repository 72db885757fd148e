"""The 1/n corrections of a deep tanh MLP (widenet.theory.finite_width) against Monte Carlo of
finite networks (widenet.theory.finite_width_samples, finite_width_training).

Top row and the first two panels below: a measured quantity times n, ``n (MC(n) - limit)``
for the means and ``n Cov`` for the fluctuations, against 1/n, with its standard error over
batches of networks, the weighted fit ``Q + c / n`` through the points, and the prediction Q
at ``1/n = 0`` (three hidden layers, widths 16 to 128; the ddNTKs at 16 to 64). Last panel:
networks of two hidden layers trained by gradient descent, ``n (E[f_t(x)] - frozen NTK
prediction)`` on a test input against the step t at widths 32 to 128, and
``FiniteWidth.trained_mean``'s correction. Writes finite_width_corrections.png into the
output directory (default ./figures) and prints the table. About 2 minutes on two cores.

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


def fit_panel(ax, label, widths, values, pred):
    """Plot ``values[n]`` ``(batches,)`` against 1/n with the weighted fit and the prediction;
    returns the fit's intercept and its standard error."""
    inv = np.array([1 / n for n in widths])
    y = np.array([float(values[n].mean()) for n in widths])
    se = np.array([float(values[n].std()) / np.sqrt(len(values[n])) for n in widths])
    design = np.stack([np.ones_like(inv), inv], 1)
    w = 1 / se**2
    cov = np.linalg.inv(design.T @ (w[:, None] * design))
    q, c = cov @ design.T @ (w * y)
    ax.errorbar(inv, y, yerr=se, fmt="o", color="C0", label="Monte Carlo")
    grid = np.linspace(0, inv.max() * 1.05, 50)
    ax.plot(grid, q + c * grid, color="C0", alpha=0.5, label="fit Q + c/n")
    ax.plot([0], [pred], "*", color="C3", markersize=14, label="finite_width")
    ax.axhline(pred, color="C3", ls="--", lw=0.8)
    ax.set_xlabel("1 / n")
    ax.set_title(label, fontsize=10)
    print(f"{label:>34} {pred:>10.4f} {q:>13.4f} {np.sqrt(cov[0, 0]):>7.4f}")
    return q, np.sqrt(cov[0, 0])


def ddntk_values(net, n, samples, batches=6):
    """n times the ddNTKs' batch means, ``(I, II)`` each ``(batches, N, N, N, N)``."""
    runs = [wn.theory.finite_width_samples(net, X, n, samples // batches, seed=31 * n + b, ddntk=True).ddntk
            for b in range(batches)]
    return [torch.stack([n * r[k].mean(0) for r in runs]) for k in range(2)]


def training_panel(ax):
    """Trained two-hidden-layer networks against trained_mean on one test input."""
    net = wn.Serial(wn.Dense(1, 1.2, 0.3), wn.Tanh(), wn.Dense(1, 1.5, 0.2), wn.Tanh(), wn.Dense(1, 1.5, 0.2))
    x = torch.tensor([[1.0, 0.2, -0.5], [0.3, -1.1, 0.4], [-0.7, 0.5, 0.9], [0.8, 0.8, 0.1]], dtype=D)
    y = torch.tensor([0.8, -0.5, 0.3, -0.2], dtype=D)
    x_test = torch.tensor([[0.5, 0.5, 0.5]], dtype=D)
    fw = wn.theory.finite_width(net, x)
    lr = 0.5 / float(torch.linalg.eigvalsh(fw.ntk).max())
    steps = list(range(0, 41, 4))
    tm = fw.trained_mean(x_test, y, lr=lr, t=steps)
    for k, n in enumerate((32, 64, 128)):
        mc = wn.theory.finite_width_training(net, x, y, x_test, n=n, samples=8000, lr=lr, t=steps, seed=n)
        ax.errorbar(steps, n * (mc.mean - tm.frozen)[:, 0], yerr=n * mc.stderr[:, 0], fmt="o-", ms=3,
                    color=f"C{k}", alpha=0.8, label=f"trained networks, n = {n}")
    ax.plot(steps, tm.correction[:, 0], color="C3", lw=2, label="trained_mean")
    ax.set_xlabel("gradient-descent step t")
    ax.set_title("n (E[f_t(x)] - frozen-NTK prediction)", fontsize=10)
    ax.legend(fontsize=8)
    print(f"{'trained, t = 40: n (E f_t - frozen)':>34} {float(tm.correction[-1, 0]):>10.4f}")


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
    fig, axes = plt.subplots(2, len(PANELS), figsize=(4 * len(PANELS), 7.4), constrained_layout=True)
    print(f"{'quantity':>34} {'predicted':>10} {'fit at 1/n=0':>13} {'+-':>7}")
    for ax, (label, name, entry) in zip(axes[0], PANELS):
        fit_panel(ax, label, widths, {n: runs[n][name][(slice(None),) + entry] for n in widths},
                  float(getattr(fw, name)[entry]))
    dd_widths = [16, 32, 64]
    dd = {n: ddntk_values(net, n, 1200) for n in dd_widths}
    for k, (ax, label) in enumerate(zip(axes[1], ("n E[ddI_0000]", "n E[ddII_0101]"))):
        entry = (0, 0, 0, 0) if k == 0 else (0, 1, 0, 1)
        fit_panel(ax, label, dd_widths, {n: dd[n][k][(slice(None),) + entry] for n in dd_widths},
                  float(fw.ddntk[k][entry]))
    for ax in axes[1, 3:]:
        ax.remove()
    training_panel(fig.add_subplot(axes[1, 2].get_gridspec()[1, 2:]))
    axes[1, 2].remove()
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("tanh MLPs: 1/n corrections against finite networks")
    fig.savefig(out / "finite_width_corrections.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
