"""Side-by-side benchmark: widenet against Neural Tangents on identical inputs, in one run.

For each workload: checks that the kernels agree, then prints throughput (kernel entries per
second, NNGP+NTK) of both, their ratio, and peak memory of each process against the size of
the two output matrices. Neural Tangents runs jit-compiled (a warm-up run excluded) in its
own environment (../shared/tools/nt-env.sh); widenet runs in a subprocess too, so that each
peak resident memory is measured alone.

Usage: python benchmarks/run.py [--n 4000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import widenet as wn
from widenet.testing.nt import nt_kernel, nt_python


def fc_relu(depth: int = 3):
    hidden = [layer for _ in range(depth) for layer in (wn.Dense(512, 1.4, 0.1), wn.Relu())]
    return wn.Serial(*hidden, wn.Dense(1, 1.4, 0.1))


def _widenet_child(n: int, d: int, dtype: str, repeats: int, out: str) -> None:
    torch.manual_seed(0)
    x = torch.from_numpy(np.load(out + ".x.npy"))
    net = fc_relu()
    net.kernel(x[:256])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        k = net.kernel(x)
        times.append(time.perf_counter() - start)
    np.save(out + ".nngp.npy", k.nngp.numpy())
    np.save(out + ".ntk.npy", k.ntk.numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out + ".json").write_text(json.dumps({"times": times, "peak": peak}))


def _baseline_rss() -> int:
    """Peak RSS of a process that only imports torch and widenet (subtracted from peaks)."""
    code = ("import resource, widenet, torch; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    python = nt_python()
    if python is None:
        sys.exit("Neural Tangents environment not found: run ../shared/tools/nt-env.sh first")
    base = _baseline_rss()
    print(f"FC depth-3 ReLU, NNGP+NTK, N={args.n}, d={args.d}, same inputs (x2=None); "
          f"{torch.get_num_threads()} threads\n")
    header = f"{'dtype':8s} {'widenet entries/s':>18s} {'NT entries/s':>14s} {'ratio':>7s} {'max rel err':>12s} " \
             f"{'widenet peak/outputs':>21s} {'NT peak/outputs':>16s}"
    print(header)
    print("-" * len(header))
    for dtype in ("float32", "float64"):
        x = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(0),
                        dtype=getattr(torch, dtype))
        tmp = Path(f"/tmp/widenet-bench-{dtype}")
        np.save(str(tmp) + ".x.npy", x.numpy())
        subprocess.run([sys.executable, __file__, "--child", str(args.n), str(args.d), dtype,
                        str(args.repeats), str(tmp)], check=True)
        ours = json.loads(Path(str(tmp) + ".json").read_text())
        nngp, ntk = np.load(str(tmp) + ".nngp.npy"), np.load(str(tmp) + ".ntk.npy")
        theirs = nt_kernel(fc_relu(), x, None, repeats=args.repeats, warmup=True)
        err = max(np.abs(nngp - theirs["nngp"]).max() / np.abs(theirs["nngp"]).max(),
                  np.abs(ntk - theirs["ntk"]).max() / np.abs(theirs["ntk"]).max())
        entries = args.n * args.n
        ours_rate, nt_rate = entries / min(ours["times"]), entries / min(theirs["times"])
        outputs = 2 * nngp.nbytes
        peak = (ours["peak"] - base) / outputs
        nt_peak = theirs.get("peak")
        nt_peak_text = "n/a" if nt_peak is None else f"{(float(nt_peak) - base) / outputs:.2f}"
        print(f"{dtype:8s} {ours_rate:18.3g} {nt_rate:14.3g} {ours_rate / nt_rate:6.2f}x {err:12.2e} "
              f"{peak:20.2f}x {nt_peak_text:>15s}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        n, d, dtype, repeats, out = sys.argv[2:7]
        torch.set_default_dtype(getattr(torch, dtype))
        _widenet_child(int(n), int(d), dtype, int(repeats), out)
    else:
        main()
