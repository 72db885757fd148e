"""Order-to-chaos phase diagrams and depth profiles (Poole et al. 2016; Schoenholz et al. 2017;
Xiao et al. 2020), computed by widenet.theory from each nonlinearity's own kernel rule.

Writes, into the output directory (default ./figures):
  phase_tanh.png, phase_erf.png, phase_relu.png   depth scale xi_c over (sigma_w^2, sigma_b^2)
                                                  with its contours and the critical line chi1 = 1
  depth_profile_tanh.png                          NTK/NNGP condition numbers and correlation
                                                  convergence with depth, ordered vs chaotic
and prints the critical lines and depth scales. About 7 s on two cores.

Usage: python examples/phase_diagrams.py [--out figures]
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import widenet as wn  # noqa: E402
from widenet import theory  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weight_vars, bias_vars = np.linspace(0.5, 4.0, 71), np.linspace(0.0, 0.3, 61)
    for name, phi in (("tanh", wn.Tanh()), ("erf", wn.Erf()), ("relu", wn.Relu())):
        diagram = theory.phase_diagram(phi, weight_vars, bias_vars)
        fig = diagram.plot()
        fig.savefig(out / f"phase_{name}.png", dpi=120)
        plt.close(fig)
        line = ", ".join(f"{b:.2f}: {w:.4f}" for b, w in zip(bias_vars[::15], diagram.critical_weight_var[::15]))
        print(f"{name}: critical sigma_w^2 at sigma_b^2 = {line}")

    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained")
    for row, (weight_var, label) in zip(axes, ((1.0, "ordered"), (2.5, "chaotic"))):
        dense = wn.Dense(1, weight_var**0.5, 0.05**0.5)
        profile = theory.depth_profile(wn.Serial(wn.Tanh(), dense), x, 60, stem=dense)
        xi = float(theory.signal_propagation(wn.Tanh(), weight_var, 0.05).xi_c)
        profile.plot(axes=row)
        row[0].set_title(f"tanh, {label}: sigma_w^2 = {weight_var}, sigma_b^2 = 0.05")
        row[1].set_title(f"fitted depth scale {profile.depth_scale:.2f}, mean field xi_c = {xi:.2f}")
        print(f"tanh {label}: depth scale {profile.depth_scale:.3f} (mean field {xi:.3f}), "
              f"NTK condition at depth 60 {profile.ntk_condition[-1]:.3g}")
    fig.savefig(out / "depth_profile_tanh.png", dpi=120)
    print(f"figures in {out}/")


if __name__ == "__main__":
    main()
