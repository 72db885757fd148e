"""The identity layer (src/widenet/layers/identity.py)."""

import torch

import widenet as wn
from layers.contract import KernelContract


class TestIdentity(KernelContract):
    twin = "Identity()"
    mc_width = 1024
    mc_samples = 200
    parameterizations = ("ntk", "standard")

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.Dense(width, 1.3, 0.2, parameterization), wn.Identity(),
                         wn.Dense(min(width, 256), 0.9, 0.1, parameterization))


def test_identity_alone_gives_the_input_kernel():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = wn.Identity().kernel(x)
    assert torch.allclose(k.nngp, x @ x.T / 3, rtol=1e-14, atol=0)
    assert torch.equal(k.ntk, torch.zeros(4, 4, dtype=torch.float64))
