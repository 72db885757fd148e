"""Side-by-side benchmark: widenet against Neural Tangents on identical inputs, in one run.

For each workload: checks that the kernels agree, then prints throughput (kernel entries per
second, NNGP+NTK, same inputs x2=None) of both, their ratio, and the peak memory each process
added beyond its imports. Neural Tangents runs jit-compiled (a warm-up run excluded) in its
own environment (../shared/tools/nt-env.sh); widenet runs in a subprocess too, so that each
peak resident memory is measured alone. For the pooled CNNs it also prints the achieved
floating-point rate against this machine's measured matrix-multiply peak.

Workloads (names for --only):
  fc          FC depth-3 ReLU, N=4000, d=784
  cnn-pool    3x [Conv 3x3 "same" + ReLU] + GlobalAvgPool + Dense on 1x8x8 inputs, N=200
  cnn-pool-small    the same at the size a user meets first, N=100
  cnn1d-pool  the same with 1-D convolutions of width 3 on 1x40 inputs, N=400
  cnn1d-pool-small  the same, N=200
  cnn-flatten the 8x8 CNN with Flatten instead of pooling, N=200
  cnn-transpose     ConvTranspose 3x3 stride 2 "same" + ReLU + Conv 3x3 + ReLU + GlobalAvgPool +
              Dense on 1x6x6 inputs (12x12 after the transposed convolution), N=60
  cnn1d-transpose   the same in 1-D, width 3, on 1x20 inputs, N=200
  attention   one transformer block (softmax self-attention with positional embeddings,
              LayerNorm, ReLU MLP, residuals) + GlobalAvgPool + Dense on 4x32 sequences, N=200
  gnn-dense   a graph network: 2x [Dense + ReLU + Aggregate] + Dense + ReLU + GlobalAvgPool +
              Dense on N=200 random undirected graphs of 30 nodes with 8 features (each pair of
              nodes linked with probability 0.2, self-loops), dense adjacency patterns
  gnn-sparse  the same graphs as sparse (tail, head) arcs
  gnn-sparse-small  the same, N=50 (Neural Tangents' sparse kernel needs memory quadratic in
              the arcs per pair of inputs: 67 GB at N=200)
  graph-10k   the same network on one graph of 10,000 nodes and 50,000 arcs (a ring, 10,000
              random links, both directions, self-loops), sparse arcs, float32 only; rates are
              1 / seconds (one kernel entry)

widenet runs once per variant and workload: "eager" (its default rules), "compiled"
(``wn.set_compile(True)``; the row also prints the seconds its warm-up call took, compilation
included, and a cold Inductor cache costs more than a warm one) and, when asked,
"reproducible" (``kernel(reproducible=True)``: every entry's bits independent of tiles and
threads, at the cost of exact matrix products) and "differentiable" (the inputs require a
gradient: the kernel recorded by autograd plus the backward pass of the sum of both kernels;
its time against "eager" is the price of reverse mode, and its peak memory that of the
recorded graph).

Usage: python benchmarks/run.py [--only cnn-pool,fc] [--dtypes float64,float32] [--repeats 3]
                                [--variants eager,compiled,reproducible,differentiable]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

# The Neural Tangents bridge and the memory helper live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import widenet as wn
from nt.memory import peak_rss
from nt import nt_kernel, nt_python


def fc_relu(depth: int = 3):
    hidden = [layer for _ in range(depth) for layer in (wn.Dense(512, 1.4, 0.1), wn.Relu())]
    return wn.Serial(*hidden, wn.Dense(1, 1.4, 0.1))


def cnn(head):
    convs = [layer for _ in range(3) for layer in (wn.Conv(64, 3, padding="same", W_std=1.4, b_std=0.1), wn.Relu())]
    return wn.Serial(*convs, head, wn.Dense(10, 1.4, 0.1))


def transpose_cnn():
    return wn.Serial(wn.ConvTranspose(64, 3, stride=2, padding="same", W_std=1.4, b_std=0.1), wn.Relu(),
                     wn.Conv(64, 3, padding="same", W_std=1.4, b_std=0.1), wn.Relu(),
                     wn.GlobalAvgPool(), wn.Dense(10, 1.4, 0.1))


def gnn():
    block = [wn.Dense(64, 1.4, 0.1), wn.Relu(), wn.Aggregate()]
    return wn.Serial(*block, *block, wn.Dense(64, 1.4, 0.1), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(10, 1.4, 0.1))


def random_graphs(n: int, v: int, sparse: bool, seed: int = 1):
    """``n`` undirected graphs of ``v`` nodes, each pair linked with probability 0.2, with
    self-loops: a dense ``(n, v, v)`` adjacency or ``(n, E, 2)`` arcs padded with -1."""
    g = torch.Generator().manual_seed(seed)
    upper = torch.triu(torch.rand(n, v, v, generator=g) < 0.2, 1)
    adjacency = upper | upper.transpose(1, 2) | torch.eye(v, dtype=torch.bool)
    if not sparse:
        return adjacency.double()
    arcs = [torch.nonzero(a) for a in adjacency]
    e = max(len(a) for a in arcs)
    return torch.stack([torch.cat([a, a.new_full((e - len(a), 2), -1)]) for a in arcs])


def large_graph(v: int = 10_000, seed: int = 1):
    """One graph of ``v`` nodes: a ring and ``v`` random links, both directions, and
    self-loops (``5 v`` arcs), as ``(1, 5 v, 2)`` arcs."""
    g = torch.Generator().manual_seed(seed)
    ring = torch.stack([torch.arange(v), (torch.arange(v) + 1) % v], 1)
    links = torch.randint(0, v, (v, 2), generator=g)
    loops = torch.arange(v).repeat(2, 1).T
    return torch.cat([ring, ring.flip(1), links, links.flip(1), loops])[None]


def transformer_block():
    attention = wn.SelfAttention(64, pos_emb="sum", b_std=0.1)
    mlp = wn.Serial(wn.Dense(64, 1.4, 0.1), wn.Relu(), wn.Dense(64, 1.0, 0.1))
    return wn.Serial(
        wn.Dense(64, 1.0, 0.1),
        wn.FanOut(2), wn.Parallel(wn.Identity(), attention), wn.FanInSum(), wn.LayerNorm(),
        wn.FanOut(2), wn.Parallel(wn.Identity(), mlp), wn.FanInSum(), wn.LayerNorm(),
        wn.GlobalAvgPool(), wn.Dense(10, 1.4, 0.1),
    )


WORKLOADS = {
    "fc": (fc_relu, (784,), 4000),
    "cnn-pool": (lambda: cnn(wn.GlobalAvgPool()), (1, 8, 8), 200),
    "cnn-pool-small": (lambda: cnn(wn.GlobalAvgPool()), (1, 8, 8), 100),
    "cnn1d-pool": (lambda: cnn(wn.GlobalAvgPool()), (1, 40), 400),
    "cnn1d-pool-small": (lambda: cnn(wn.GlobalAvgPool()), (1, 40), 200),
    "cnn-flatten": (lambda: cnn(wn.Flatten()), (1, 8, 8), 200),
    "cnn-transpose": (transpose_cnn, (1, 6, 6), 60),
    "cnn1d-transpose": (transpose_cnn, (1, 20), 200),
    "attention": (transformer_block, (4, 32), 200),
    "gnn-dense": (gnn, (8, 30), 200),
    "gnn-sparse": (gnn, (8, 30), 200),
    "gnn-sparse-small": (gnn, (8, 30), 50),
    "graph-10k": (gnn, (8, 10_000), 1),
}

# Graph workloads: each input's pattern (built from N), and per-workload options.
GRAPHS = {
    "gnn-dense": lambda n: random_graphs(n, 30, sparse=False),
    "gnn-sparse": lambda n: random_graphs(n, 30, sparse=True),
    "gnn-sparse-small": lambda n: random_graphs(n, 30, sparse=True),
    "graph-10k": lambda n: large_graph(),
}
OPTIONS = {"graph-10k": {"memory": "15GB", "dtypes": ("float32",), "variants": ("eager",)}}


def _flops_per_entry(name: str) -> float:
    """Floating-point operations per output entry of the pooled CNNs (a lower bound that
    counts what any exact method must do): per pair, per layer and per position pair, the
    ReLU rule for NNGP and NTK (~30 flops, counting sqrt and atan2 as one each) and the 3x3
    (or width-3) tied-offset convolution of NNGP and NTK (2 * 2 * prod(window) flops)."""
    shape = WORKLOADS[name][1]
    positions = math.prod(shape[1:])
    window = 3 ** (len(shape) - 1)
    return 3 * positions**2 * (30 + 4 * window)


def _matmul_peak(dtype: torch.dtype) -> float:
    a = torch.randn(2048, 2048, dtype=dtype)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048**3 / (time.perf_counter() - start)


def _widenet_child(name: str, dtype: str, repeats: int, out: str, variant: str) -> None:
    x = torch.from_numpy(np.load(out + ".x.npy"))
    pattern = torch.from_numpy(np.load(out + ".pattern.npy")) if name in GRAPHS else None
    memory = OPTIONS.get(name, {}).get("memory")
    net = WORKLOADS[name][0]()
    if variant not in ("eager", "compiled", "reproducible", "differentiable"):
        raise SystemExit(f"unknown variant {variant!r}: eager, compiled, reproducible or differentiable")
    wn.set_compile(variant == "compiled")
    reproducible = variant == "reproducible"

    def kernel(inputs):
        graphs = {} if pattern is None else {"pattern1": pattern[: inputs.shape[0]]}
        if variant != "differentiable":
            return net.kernel(inputs, reproducible=reproducible, memory=memory, **graphs)
        # Autograd records the kernel of inputs that require a gradient; the backward pass
        # of a scalar of both kernels is part of the time.
        inputs = inputs.clone().requires_grad_()
        k = net.kernel(inputs, memory=memory, **graphs)
        (k.nngp.sum() + k.ntk.sum()).backward()
        return wn.Kernel(k.nngp.detach(), k.ntk.detach(), k.var1.detach())

    start = time.perf_counter()
    if len(x) > 1:  # (a single input, one large graph, is its own warm-up: timed as is)
        kernel(x[:16])  # warm-up (and compilation)
    warmup = time.perf_counter() - start
    before = peak_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        k = kernel(x)
        times.append(time.perf_counter() - start)
    np.save(out + ".nngp.npy", k.nngp.numpy())
    np.save(out + ".ntk.npy", k.ntk.numpy())
    peak = peak_rss()
    Path(out + ".json").write_text(json.dumps({"times": times, "peak": peak, "before": before,
                                               "warmup": warmup}))


def _baseline_rss() -> int:
    """Peak RSS of a process that only imports torch and widenet (subtracted from peaks)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'tests')!r}); "
            "import widenet, torch; from nt.memory import peak_rss; "
            "print(peak_rss())")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="eager,compiled")
    args = parser.parse_args()
    python = nt_python()
    if python is None:
        sys.exit("Neural Tangents environment not found: run ../shared/tools/nt-env.sh first")
    base = _baseline_rss()
    print(f"NNGP+NTK, same inputs (x2=None); {torch.get_num_threads()} threads; peaks are MB added "
          f"beyond imports (widenet's default memory budget: a quarter of available RAM)\n")
    header = (f"{'workload':17s} {'dtype':8s} {'variant':12s} {'widenet entries/s':>18s} {'NT entries/s':>13s} {'ratio':>7s} "
              f"{'max rel err':>12s} {'widenet MB':>11s} {'NT MB':>8s} {'GFLOP/s (of matmul peak)':>26s}"
              f" {'warm-up s':>9s}")
    print(header)
    print("-" * len(header))
    for name in args.only.split(","):
        builder, shape, n = WORKLOADS[name]
        for dtype in args.dtypes.split(","):
            if dtype not in OPTIONS.get(name, {}).get("dtypes", (dtype,)):
                continue
            torch_dtype = getattr(torch, dtype)
            x = torch.randn((n,) + shape, generator=torch.Generator().manual_seed(0), dtype=torch_dtype)
            tmp = Path(f"/tmp/widenet-bench-{name}-{dtype}")
            np.save(str(tmp) + ".x.npy", x.numpy())
            graphs = {}
            if name in GRAPHS:
                pattern = GRAPHS[name](n)
                np.save(str(tmp) + ".pattern.npy", pattern.numpy())
                graphs = {"pattern1": pattern}
            try:
                theirs = nt_kernel(builder(), x, None, repeats=args.repeats, warmup=True, **graphs)
            except RuntimeError as err:  # Neural Tangents ran out of memory or failed
                lines = [ln for ln in str(err).splitlines() if "Error: " in ln] or str(err).strip().splitlines()
                reason = lines[-1].strip()[:140]
                print(f"{name:17s} {dtype:8s} Neural Tangents failed: {reason}", flush=True)
                theirs = None
            nt_rate = math.nan if theirs is None else n * n / min(theirs["times"])
            nt_peak = None if theirs is None else theirs.get("peak")
            nt_mb = "n/a" if nt_peak is None else f"{(float(nt_peak) - base) / 1e6:.0f}"
            off = ~np.eye(n, dtype=bool)  # NT's same-input diagonal carries a sqrt(eps) error
            for variant in args.variants.split(","):
                if variant not in OPTIONS.get(name, {}).get("variants", (variant,)):
                    continue
                subprocess.run([sys.executable, __file__, "--child", name, dtype, str(args.repeats),
                                str(tmp), variant], check=True)
                ours = json.loads(Path(str(tmp) + ".json").read_text())
                nngp, ntk = np.load(str(tmp) + ".nngp.npy"), np.load(str(tmp) + ".ntk.npy")
                if theirs is None:
                    err = math.nan
                elif n == 1:
                    err = max(float(np.abs(a - b).max() / np.abs(b).max())
                              for a, b in ((nngp, theirs["nngp"]), (ntk, theirs["ntk"])))
                else:
                    err = max(np.abs(a - b)[off].max() / np.abs(b).max()
                              for a, b in ((nngp, theirs["nngp"]), (ntk, theirs["ntk"])))
                ours_rate = n * n / min(ours["times"])
                peak_mb = (ours["peak"] - base) / 1e6
                flops = "-"
                if "pool" in name:
                    # Only the upper triangle of pairs is computed when x2 is None.
                    rate = _flops_per_entry(name) * (n * (n + 1) / 2) / min(ours["times"])
                    peak = _matmul_peak(torch_dtype)
                    flops = f"{rate / 1e9:.1f} ({100 * rate / peak:.0f}% of {peak / 1e9:.0f})"
                print(f"{name:17s} {dtype:8s} {variant:12s} {ours_rate:18.3g} {nt_rate:13.3g} "
                      f"{ours_rate / nt_rate:6.2f}x {err:12.2e} {peak_mb:11.0f} {nt_mb:>8s} {flops:>26s} "
                      f"{ours['warmup']:9.1f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, dtype, repeats, out, variant = sys.argv[2:7]
        _widenet_child(name, dtype, int(repeats), out, variant)
    else:
        main()
