"""Flattening (src/widenet/layers/flatten.py)."""

import widenet as wn
from layers.contract import KernelContract


class TestFlatten(KernelContract):
    input_shape = (2, 4, 3)
    twin = "FlattenModule(start_dim=1, end_dim=-1)"
    mc_samples = 100  # the flattened kernel averages fewer correlated terms: a noisier estimate

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.Conv(width, 3, W_std=1.4, b_std=0.2, parameterization=parameterization), wn.Relu(),
                         wn.Flatten(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))
