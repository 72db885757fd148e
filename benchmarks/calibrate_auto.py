"""Calibrates the cost model behind ``empirical.ntk(method="auto")`` on this machine.

Times every method on a grid of models (MLPs of several widths and output counts, CNNs,
a residual network, a normalization model, an attention block), input counts and output
forms; fits the three constants of ``widenet.empirical._cost`` (seconds per autograd-pass
flop, per contraction flop, per call) by non-negative least squares on relative error;
then reports, with the fitted constants and with the ones the library ships, how often
``auto`` picks the fastest method and how much slower its pick is when it does not.

Usage: python benchmarks/calibrate_auto.py [--dtype float32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from widenet import empirical
from widenet.empirical import _cost, _ntk
from widenet.empirical._structured import structured_modules
from widenet.errors import ParameterError


class _Attention(nn.Module):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


def models():
    def mlp(d_in, width, depth, d_out):
        dims = [d_in] + [width] * depth
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(width, d_out))

    def cnn(channels, size, d_out):
        return (nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, d_out)), (3, size, size))

    return {
        "mlp 16x2 o3": (mlp(8, 16, 2, 3), (8,)),
        "mlp 256x2 o10": (mlp(64, 256, 2, 10), (64,)),
        "mlp 1024x2 o10": (mlp(64, 1024, 2, 10), (64,)),
        "mlp 512x3 o1": (mlp(32, 512, 3, 1), (32,)),
        "mlp 128x2 o100": (mlp(32, 128, 2, 100), (32,)),
        "cnn 16 8x8 o10": cnn(16, 8, 10),
        "cnn 32 16x16 o10": cnn(32, 16, 10),
        "norm o2": (nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.LayerNorm(64),
                                  nn.Linear(64, 2)), (16,)),
        "attention o4": (_Attention(), (12, 8)),
    }


def measure(dtype, repeats):
    rows = []
    for name, (model, shape) in models().items():
        model = model.to(dtype)
        for n in (8, 48):
            x = torch.randn(n, *shape, dtype=dtype)
            for outputs in ("mean", "full"):
                chosen = {k: p.detach() for k, p in model.named_parameters()}
                n_out = model(x[:1]).reshape(1, -1).shape[1]
                probe, modules, seen = _ntk._probe(model, chosen, structured_modules(model, chosen), x, n_out)
                times = {}
                for method in ("jacobian", "ntvp", "structured"):
                    try:
                        empirical.ntk(model, x[:2], outputs=outputs, method=method)
                    except ParameterError:
                        continue  # ntvp on fused attention: no derivative rule
                    best = np.inf
                    for _ in range(repeats):
                        start = time.perf_counter()
                        empirical.ntk(model, x, outputs=outputs, method=method, memory="4GB", block_size=n)
                        best = min(best, time.perf_counter() - start)
                    times[method] = best
                rows.append({"label": f"{name} n={n} {outputs}", "times": times, "probe": dataclasses.asdict(probe),
                             "n": n, "outputs": outputs})
                print(f"  {rows[-1]['label']:32s} " + " ".join(f"{m} {t * 1e3:8.2f} ms" for m, t in times.items()), flush=True)
    return rows


def _work(row):
    """The cost model's counts for one timed case (recomputed, so a changed model refits)."""
    probe = dict(row["probe"])
    probe["layers"] = [_cost.Layer(**layer) for layer in probe["layers"]]
    n = row["n"]
    return _cost.work(_cost.Probe(**probe), n, n, True, {m: n for m in row["times"]}, row["outputs"])


def evaluate(rows, constants):
    hits, regrets = 0, []
    for label, times, work in rows:
        predicted = {m: float(np.dot(constants, work[m])) for m in times}
        pick = min(predicted, key=predicted.get)
        best = min(times, key=times.get)
        hits += pick == best
        regrets.append(times[pick] / times[best])
    return hits, regrets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save", help="write the timings and work counts to this JSON file")
    parser.add_argument("--load", help="refit from a JSON file written by --save instead of timing")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"timing every method ({args.dtype}, {torch.get_num_threads()} threads):")
    if args.load:
        with open(args.load) as f:
            rows = json.load(f)
    else:
        rows = measure(getattr(torch, args.dtype), args.repeats)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(rows, f)
    rows = [(r["label"], r["times"], _work(r)) for r in rows]
    a, b = [], []
    for _, times, work in rows:
        for method, t in times.items():
            a.append(np.asarray(work[method]) / t)  # relative error: divide each row by its time
            b.append(1.0)
    fitted, _ = nnls(np.asarray(a), np.asarray(b))
    shipped = np.array([_cost.SECONDS_PER_PASS_FLOP, _cost.SECONDS_PER_CONTRACT_FLOP, _cost.SECONDS_PER_CALL,
                        _cost.SECONDS_PER_JACOBIAN_ENTRY])
    print("\nfitted: SECONDS_PER_PASS_FLOP = %.3g, SECONDS_PER_CONTRACT_FLOP = %.3g, SECONDS_PER_CALL = %.3g, "
          "SECONDS_PER_JACOBIAN_ENTRY = %.3g" % tuple(fitted))
    for label, constants in (("fitted", fitted), ("shipped", shipped)):
        hits, regrets = evaluate(rows, constants)
        print(f"{label:8s}: auto picks the fastest in {hits}/{len(rows)} cases; its pick is on average "
              f"{np.mean(regrets):.2f}x and at worst {np.max(regrets):.2f}x the fastest's time")


if __name__ == "__main__":
    main()
