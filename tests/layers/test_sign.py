"""The sign function (src/widenet/layers/sign.py)."""

import torch

import widenet as wn
from layers.contract import NonlinearityContract


def _x(n, d=5, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class TestSign(NonlinearityContract):
    layer_type = wn.Sign
    dual_oracle = "monte_carlo"
    mc_ntk = False  # sign's derivative is 0 a.e.; its finite NTK is just the readout's


def test_sign_diagonal_is_exact_after_each_layer():
    # E[sign(u)^2] = 1, so after Dense(W, b) the diagonal is exactly W^2 + b^2.
    k = wn.Serial(wn.Dense(8, 1.1, 0.1), wn.Sign(), wn.Dense(8, 1.1, 0.1), wn.Sign(), wn.Dense(1, 1.1, 0.1)).kernel(_x(9))
    assert torch.allclose(k.nngp.diagonal(), torch.full((9,), 1.1**2 + 0.1**2, dtype=torch.float64), rtol=1e-15)
