"""Small architectures and inputs shared by the engine's and the layer base's tests."""

import torch

import widenet as wn

NETS = {
    "relu": wn.Serial(wn.Dense(512, 1.5, 0.05), wn.Relu(), wn.Dense(512, 1.5, 0.05), wn.Relu(), wn.Dense(1, 1.5, 0.05)),
    "erf-standard": wn.Serial(wn.Dense(64, 1.2, 0.3, "standard"), wn.Erf(), wn.Dense(8, 0.9, None, "standard")),
    "residual": wn.Serial(wn.Dense(64), wn.FanOut(2), wn.Parallel(wn.Serial(wn.Gelu(), wn.Dense(64)), wn.Identity()),
                          wn.FanInSum(), wn.Tanh(), wn.Dense(1)),
}


def inputs(n, d=5, seed=0, dtype=torch.float64):
    """``n`` standard normal inputs of dimension ``d`` from their own generator."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
