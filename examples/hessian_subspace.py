"""Gradient descent happens in a tiny subspace (Gur-Ari, Roberts & Dyer 2018), with
widenet.theory.

A fully connected network (two hidden layers of 32 ReLU units, standard parameterization,
3,466 parameters) is trained on 1,000 of scikit-learn's handwritten digits (10 classes, pixels
scaled to [0, 1]) with cross-entropy and SGD (learning rate 0.1, batches of 64), as in the
paper's MNIST experiment. Every 25 steps the top 10 Hessian eigenvectors of the full training
loss are found by Lanczos over Hessian-vector products, and the fraction of the full-batch
gradient in their span is measured: after a few dozen steps most of the gradient lies in 10 of
3,466 directions (a random 10-dimensional subspace holds 0.3%), and the subspace itself
changes slowly. Full-batch gradient descent at the same rate, far below the edge of stability,
is shown for contrast: its gradient leaves the top subspace, whose directions it has already
fitted.

Writes, into the output directory (default ./figures):
  hessian_subspace.png      gradient fraction, top eigenvalues, overlap with the subspace at
                            step 300, for SGD (top row) and full-batch GD (bottom row)
and prints the fractions. About 16 s on two cores.

Usage: python examples/hessian_subspace.py [--out figures] [--steps 600]
"""

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import widenet as wn  # noqa: E402
from widenet import theory  # noqa: E402

D = torch.float64


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    xs, ys = load_digits(return_X_y=True)
    x, y = torch.tensor(xs[:1000] / 16.0, dtype=D), torch.tensor(ys[:1000])
    net = wn.Serial(wn.Dense(32, W_std=math.sqrt(2), b_std=0.0, parameterization="standard"), wn.Relu(),
                    wn.Dense(32, W_std=math.sqrt(2), b_std=0.0, parameterization="standard"), wn.Relu(),
                    wn.Dense(10, parameterization="standard"))
    model = net.module(64, seed=0, dtype=D)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
    for row, (name, batch) in zip(axes, (("SGD, batch 64", 64), ("full-batch GD", None))):
        run = theory.hessian_subspace(model, F.cross_entropy, x, y, k=10, steps=args.steps, learning_rate=0.1,
                                      batch_size=batch, record=25, progress=True)
        ref = int((run.steps == min(300, args.steps)).nonzero()[0])
        run.plot(row, reference=ref)
        row[0].set_title(name, fontsize=10)
        late = run.gradient_fraction[run.steps >= 100]
        print(f"{name}: loss {float(run.loss[0]):.3f} -> {float(run.loss[-1]):.4f}; gradient fraction in the top-10 "
              f"subspace after step 100: mean {float(late.mean()):.3f}, min {float(late.min()):.3f} "
              f"(random: {run.random_fraction:.4f}); overlap of the subspaces at steps {int(run.steps[ref])} and "
              f"{int(run.steps[-1])}: {float(run.overlap[ref, -1]):.3f}")
    fig.savefig(out / "hessian_subspace.png", dpi=120)
    print(f"figure in {out.resolve()}")


if __name__ == "__main__":
    main()
