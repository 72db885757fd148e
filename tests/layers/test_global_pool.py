"""Global pooling (src/widenet/layers/global_pool.py)."""

import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import monte_carlo, rel_frobenius


class _GlobalPoolContract(KernelContract):
    input_shape = (2, 5, 4)
    twin = "GlobalPoolModule"
    mc_samples = 64

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.Conv(width, 3, W_std=1.4, b_std=0.2, parameterization=parameterization), wn.Erf(),
                         self.layer_type(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))


class TestGlobalAvgPool(_GlobalPoolContract):
    layer_type = wn.GlobalAvgPool


class TestGlobalSumPool(_GlobalPoolContract):
    layer_type = wn.GlobalSumPool


def _images(shape, n1=3, n2=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n1,) + shape, generator=g, dtype=dtype),
            torch.randn((n2,) + shape, generator=g, dtype=dtype))


def test_finite_width_error_of_a_pooled_cnn_falls_with_width():
    # The estimate must approach the kernel, not merely land near it: the bias is O(1/width).
    x1, x2 = _images((1, 6), n1=2, n2=2, seed=3)
    errors = []
    for width in (16, 512):
        net = wn.Serial(wn.Conv(width, 3, W_std=1.5, b_std=0.3), wn.Relu(), wn.Conv(width, 3), wn.Relu(),
                        wn.GlobalAvgPool(), wn.Dense(width))
        exact = net.kernel(x1, x2)
        nngp, _ = monte_carlo(net, x1, x2, n_samples=200, ntk=False)
        errors.append(rel_frobenius(nngp, exact.nngp))
    assert errors[1] < errors[0] / 2 and errors[1] < 0.03
