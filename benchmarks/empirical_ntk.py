"""Side-by-side: widenet's empirical NTK against Neural Tangents' on the same models, weights
and inputs, measured in one run.

Models: an MLP 64 -> 1024 -> 1024 -> 10 (ReLU, N = 64) and a small CNN (two 3x3 "same"
convolutions with 32 channels and ReLU, global average pooling, Dense 10; inputs 3x16x16,
N = 32). Kernels: full (N, N, 10, 10) and traced (N, N; mean over outputs). For each
implementation: seconds for the whole kernel (minimum of repeats; Neural Tangents jit-compiled
with a warm-up run excluded), the ratio of Neural Tangents' best time to widenet's default
(method="auto"), the ratio of widenet's own Jacobian contraction to its default, the largest
relative difference of the kernels, and peak memory (each side in its own process).

Usage: python benchmarks/empirical_ntk.py [--dtype float32] [--repeats 3] [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# The Neural Tangents bridge and the memory helper live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from widenet import empirical
from nt.memory import peak_rss
from nt import nt_python

METHODS = ("structured", "ntvp", "jacobian")
OURS = ("auto",) + METHODS  # "auto": what a user gets by default


def build(name: str, dtype: torch.dtype):
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
        x = torch.randn(64, 64)
        layers = [model[0], model[2], model[4]]
    else:
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        x = torch.randn(32, 3, 16, 16)
        layers = [model[0], model[2], model[6]]
    return model.to(dtype), x.to(dtype), layers


def _child(model_name: str, dtype: str, method: str, outputs: str, repeats: int, out: str) -> None:
    model, x, _ = build(model_name, getattr(torch, dtype))
    empirical.ntk(model, x[:2], outputs=outputs, method=method)  # warm-up
    before = peak_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        k = empirical.ntk(model, x, outputs=outputs, method=method, memory="4GB")
        times.append(time.perf_counter() - start)
    np.save(out + ".npy", k.numpy())
    peak = peak_rss()
    Path(out + ".json").write_text(json.dumps({"time": min(times), "peak": peak, "before": before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=("mlp", "cnn"), default=["mlp", "cnn"])
    args = parser.parse_args()
    python = nt_python()
    if python is None:
        sys.exit("Neural Tangents environment not found: run ../shared/tools/nt-env.sh first")
    print(f"empirical NTK, {args.dtype}, {torch.get_num_threads()} threads; seconds per kernel; MB = peak beyond imports\n")
    header = (f"{'model':5s} {'kernel':7s} " + " ".join(f"{'wn ' + m:>14s}" for m in OURS) + " "
              + " ".join(f"{'NT ' + m:>14s}" for m in METHODS)
              + f" {'NT best/wn auto':>16s} {'wn jac/wn auto':>15s} {'max rel diff':>13s} {'wn auto MB':>11s} {'NT MB':>7s}")
    print(header)
    print("-" * len(header))
    for model_name in args.models:
        model, x, layers = build(model_name, getattr(torch, args.dtype))
        for outputs, trace in (("full", []), ("mean", [-1])):
            with tempfile.TemporaryDirectory() as tmp:
                ours, peaks = {}, {}
                for method in OURS:
                    out = f"{tmp}/wn-{method}"
                    subprocess.run([sys.executable, __file__, "--child", model_name, args.dtype, method, outputs,
                                    str(args.repeats), out], check=True)
                    info = json.loads(Path(out + ".json").read_text())
                    ours[method] = (info["time"], np.load(out + ".npy"))
                    peaks[method] = (info["peak"] - info["before"]) / 1e6
                arrays = {"x": x.numpy()}
                for i, layer in enumerate(layers):
                    arrays[f"w{i}"] = layer.weight.detach().numpy()
                    arrays[f"b{i}"] = layer.bias.detach().numpy()
                np.savez(f"{tmp}/arrays.npz", **arrays)
                job = {"dtype": args.dtype, "model": model_name, "arrays": f"{tmp}/arrays.npz", "repeats": args.repeats,
                       "trace_axes": trace, "implementations": list(METHODS), "out": f"{tmp}/nt"}
                Path(f"{tmp}/job.json").write_text(json.dumps(job))
                runner = Path(__file__).with_name("_nt_empirical.py")
                env = {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}
                subprocess.run([python, str(runner), f"{tmp}/job.json"], check=True, env=env)
                theirs = json.loads(Path(f"{tmp}/nt.json").read_text())
                ref = np.load(f"{tmp}/nt.structured.npy")
            auto = ours["auto"][0]
            best_theirs = min(theirs[m] for m in METHODS)
            diff = max(float(np.abs(k - ref).max() / np.abs(ref).max()) for _, k in ours.values())
            print(f"{model_name:5s} {outputs:7s} " + " ".join(f"{ours[m][0]:14.4f}" for m in OURS) + " "
                  + " ".join(f"{theirs[m]:14.4f}" for m in METHODS)
                  + f" {best_theirs / auto:15.2f}x {ours['jacobian'][0] / auto:14.1f}x {diff:13.2e}"
                  + f" {peaks['auto']:11.0f} {theirs['peak'] / 1e6:7.0f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7])
    else:
        main()
