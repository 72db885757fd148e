"""Layer normalization (src/widenet/layers/layer_norm.py)."""

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import monte_carlo, rel_frobenius
from widenet.errors import LayerOrderError, ParameterError, ShapeError

TOL = 0.05


class TestLayerNorm(KernelContract):
    params = {"axis": (1, 2), "eps": 0.3}
    float_params = ("eps",)
    input_shape = (3, 5, 4)
    twin = "LayerNormModule(axes=(1, 2), eps=0.3)"
    bad = (
        (lambda: wn.LayerNorm(axis=2), ParameterError, r"LayerNorm: axis must include the channel axis 1 \(got 2\)"),
        (lambda: wn.LayerNorm(eps=-1.0), ParameterError, r"LayerNorm: eps must be a finite float >= 0 \(got -1.0\)"),
    )

    def network(self, width, parameterization="ntk", axis=1, eps=1e-12):
        return wn.Serial(wn.Conv(width, 3, W_std=1.3, b_std=0.4, parameterization=parameterization),
                         wn.LayerNorm(axis, eps), wn.Relu(), wn.GlobalAvgPool(),
                         wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


def test_layer_norm_needs_a_gaussian_input_and_fitting_axes():
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    with pytest.raises(LayerOrderError, match=r"LayerNorm: its input must be Gaussian"):
        wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.LayerNorm()).kernel(x)
    with pytest.raises(ShapeError, match=r"LayerNorm: axis \(1, 3\) does not fit the layer's input, which has 0 spatial axes"):
        wn.Serial(wn.Dense(4), wn.LayerNorm(axis=(1, 3))).kernel(torch.randn(2, 3, dtype=torch.float64))


def _images(shape, n1=3, n2=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n1,) + shape, generator=g, dtype=dtype),
            torch.randn((n2,) + shape, generator=g, dtype=dtype))


def test_layernorm_matches_monte_carlo():
    x1, x2 = _images((3, 4, 3), seed=1)
    x1 = x1 * torch.tensor([0.5, 1.0, 2.0], dtype=x1.dtype).reshape(1, 3, 1, 1)  # unequal scales
    net = wn.Serial(wn.Conv(512, 3, W_std=1.3, b_std=0.4), wn.LayerNorm(), wn.Relu(),
                    wn.Conv(512, 2, padding="valid"), wn.LayerNorm(axis=(1, 2, 3)), wn.Gelu(),
                    wn.GlobalAvgPool(), wn.Dense(64))
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=60)
    assert rel_frobenius(nngp, exact.nngp) < TOL
    assert rel_frobenius(ntk, exact.ntk) < TOL
