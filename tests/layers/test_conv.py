"""Convolutions (src/widenet/layers/conv.py)."""

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import monte_carlo, rel_frobenius
from widenet.errors import LayerOrderError, ParameterError, ShapeError

TOL = 0.05  # REFERENCE: NT's Monte Carlo tests use 4-6% relative Frobenius


class TestConv(KernelContract):
    params = {"W_std": 1.4, "b_std": 0.2}
    float_params = ("W_std", "b_std")
    input_shape = (2, 5, 4)
    twin = "ConvModule"
    mc_samples = 64  # both parameterizations, strides, paddings: test_cnn_kernels_match_monte_carlo
    bad = (
        (lambda: wn.Conv(0, 3), ParameterError, r"Conv: out_channels must be an integer >= 1 \(got 0\)"),
        (lambda: wn.Conv(4, (3, 3, 3, 3)), ParameterError, r"Conv: kernel_size must be an int or 1 to 3 ints"),
        (lambda: wn.Conv(4, 3, stride=0), ParameterError, r"Conv: stride must be an integer >= 1 \(got 0\)"),
        (lambda: wn.Conv(4, 3, padding="SAME"), ParameterError,
         r"Conv: padding must be one of 'same', 'valid', 'circular' \(got 'SAME'\)"),
        (lambda: wn.Conv(4, 3, W_std=-1.0), ParameterError, r"Conv: W_std must be a finite float >= 0 \(got -1.0\)"),
    )

    def network(self, width, parameterization="ntk", W_std=1.4, b_std=0.2):
        return wn.Serial(wn.Conv(width, 3, W_std=W_std, b_std=b_std, parameterization=parameterization),
                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))


def _images(shape, n1=3, n2=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n1,) + shape, generator=g, dtype=dtype),
            torch.randn((n2,) + shape, generator=g, dtype=dtype))


CASES = {
    "same-s1/valid-s2/globalavg": (("same", 1, 1), ("valid", 2, 1), "globalavg"),
    "circular-s2/same-s1-dil2/flatten": (("circular", 2, 1), ("same", 1, 2), "flatten"),
    "valid-s1/circular-s1/avgpool-same": (("valid", 1, 1), ("circular", 1, 1), "avgpool"),
    "same-s2/valid-s1/sumpool-valid": (("same", 2, 1), ("valid", 1, 1), "sumpool"),
}


def _cnn(case, parameterization, width=256):
    (p1, s1, d1), (p2, s2, d2), head = CASES[case]
    heads = {
        "globalavg": [wn.GlobalAvgPool()],
        "flatten": [wn.Flatten()],
        "avgpool": [wn.AvgPool(2, stride=1, padding="same"), wn.GlobalSumPool()],
        "sumpool": [wn.SumPool(2, stride=1, padding="valid"), wn.Flatten()],
    }[head]
    return wn.Serial(
        wn.Conv(width, 3, stride=s1, padding=p1, dilation=d1, W_std=1.4, b_std=0.2, parameterization=parameterization),
        wn.Relu(),
        wn.Conv(width, 2, stride=s2, padding=p2, dilation=d2, W_std=1.2, b_std=0.1, parameterization=parameterization),
        wn.Erf(),
        *heads,
        wn.Dense(512, 1.1, 0.1, parameterization),
    )


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("shape", [(2, 7), (2, 6, 5)], ids=["1d", "2d"])
@pytest.mark.parametrize("case", list(CASES))
def test_cnn_kernels_match_monte_carlo(case, shape, parameterization):
    net = _cnn(case, parameterization)
    x1, x2 = _images(shape)
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=80)
    assert rel_frobenius(nngp, exact.nngp) < TOL
    assert rel_frobenius(ntk, exact.ntk) < TOL


def test_conv_module_is_an_nn_conv_with_the_stated_initialization():
    x, _ = _images((3, 6, 5), n1=2)
    std = wn.Conv(5, 3, padding="same", W_std=1.3, b_std=0.4, parameterization="standard").module((3, 6, 5), seed=1,
                                                                                              dtype=x.dtype)
    ref = torch.nn.Conv2d(3, 5, 3, padding=1, dtype=x.dtype)
    with torch.no_grad():
        ref.weight.copy_(std.weight)
        ref.bias.copy_(std.bias)
    torch.testing.assert_close(std(x), ref(x))
    # ntk parameterization: N(0, 1) parameters scaled in the forward pass.
    ntk = wn.Conv(5, 3, W_std=1.3, b_std=0.4).module((3, 6, 5), seed=1, dtype=x.dtype)
    expected = torch.nn.functional.conv2d(x, ntk.weight, padding=1) * (1.3 / 27**0.5)
    torch.testing.assert_close(ntk(x), expected + 0.4 * ntk.bias.reshape(1, -1, 1, 1))
    lazy = wn.Conv(5, 3, stride=2, padding="circular").module(seed=1, dtype=x.dtype)
    eager = wn.Conv(5, 3, stride=2, padding="circular").module((3, 6, 5), seed=1, dtype=x.dtype)
    torch.testing.assert_close(lazy(x), eager(x), rtol=0, atol=0)
    assert lazy(x).shape == (2, 5, 3, 3)


def test_spatial_errors_are_clear():
    x, _ = _images((2, 4, 4), n1=2)
    with pytest.raises(ShapeError, match=r"Conv: needs inputs with spatial axes"):
        wn.Conv(4, 3).kernel(torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"padding='valid' each spatial size must be at least the \(dilated\) window 5 \(got 4\)"):
        wn.Conv(4, 3, padding="valid", dilation=2).kernel(x)
    with pytest.raises(ParameterError, match=r"Conv: padding must be one of 'same', 'valid', 'circular' \(got 'SAME'\)"):
        wn.Conv(4, 3, padding="SAME")
    with pytest.raises(ParameterError, match=r"Conv: kernel_size must be an int or a sequence of 2 ints"):
        wn.Conv(4, (3, 3, 3)).kernel(x)
    with pytest.raises(LayerOrderError, match=r"LayerNorm: its input must be Gaussian"):
        wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.LayerNorm()).kernel(x)
    with pytest.raises(LayerOrderError, match=r"Relu: its input must be Gaussian"):
        wn.Serial(wn.Conv(4, 3), wn.Flatten(), wn.Relu()).kernel(x)
    with pytest.raises(ParameterError, match=r"Dropout: rate must be a finite float >= 0 and < 1 \(got 1.0\)"):
        wn.Dropout(1.0)
    with pytest.raises(ShapeError, match=r"x2 must have shape \(N2, 2, 4, 4\) to match x1"):
        wn.Conv(4, 3).kernel(x, torch.randn(2, 2, 4, 5, dtype=torch.float64))
