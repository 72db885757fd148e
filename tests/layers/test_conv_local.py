"""Locally connected layers (src/widenet/layers/conv_local.py)."""

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract, check_neural_tangents
from oracles import monte_carlo, rel_frobenius
from widenet.errors import ParameterError, ShapeError

D = torch.float64


class TestConvLocal(KernelContract):
    params = {"W_std": 1.4, "b_std": 0.2}
    float_params = ("W_std", "b_std")
    input_shape = (2, 5, 4)
    twin = "ConvLocalModule"
    parameterizations = ("ntk", "standard")
    bad = (
        (lambda: wn.ConvLocal(0, 3), ParameterError, r"ConvLocal: out_channels must be an integer >= 1 \(got 0\)"),
        (lambda: wn.ConvLocal(4, 3, stride=0), ParameterError, r"ConvLocal: stride must be an integer >= 1 \(got 0\)"),
        (lambda: wn.ConvLocal(4, 3, padding="SAME"), ParameterError,
         r"ConvLocal: padding must be one of 'same', 'valid', 'circular' \(got 'SAME'\)"),
    )

    def network(self, width, parameterization="ntk", W_std=1.4, b_std=0.2):
        # Flatten after a ConvLocal: the full position layout goes through the diagonal mask
        return wn.Serial(wn.ConvLocal(width, 3, W_std=W_std, b_std=b_std, parameterization=parameterization),
                         wn.Relu(), wn.ConvLocal(width, 2, stride=2, padding="valid", parameterization=parameterization),
                         wn.Erf(), wn.Flatten(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))


@pytest.mark.parametrize("padding, head", [("same", "pool"), ("circular", "pool"), ("valid", "flatten")])
def test_kernels_match_monte_carlo_and_differ_from_the_shared_convolution(padding, head):
    g = torch.Generator().manual_seed(7)
    x1, x2 = torch.randn(3, 2, 6, generator=g, dtype=D), torch.randn(2, 2, 6, generator=g, dtype=D)
    tail = [wn.GlobalAvgPool()] if head == "pool" else [wn.Flatten()]

    def net(layer):
        return wn.Serial(layer(256, 3, padding=padding, W_std=1.3, b_std=0.2), wn.Relu(),
                         wn.Conv(256, 3, padding=padding, W_std=1.2), wn.Relu(), *tail, wn.Dense(256))

    exact = net(wn.ConvLocal).kernel(x1, x2)
    nngp, ntk = monte_carlo(net(wn.ConvLocal), x1, x2, n_samples=64)
    assert rel_frobenius(nngp, exact.nngp) < 0.05 and rel_frobenius(ntk, exact.ntk) < 0.05
    if head == "pool":  # pooling reads the pairs of distinct positions that ConvLocal zeroes
        shared = net(wn.Conv).kernel(x1, x2)
        assert rel_frobenius(nngp, shared.nngp) > 0.05  # the oracle tells the two apart


def test_with_nothing_mixing_positions_after_it_the_kernel_is_the_convolutions():
    x = torch.randn(4, 2, 5, 4, dtype=D, generator=torch.Generator().manual_seed(8))
    a = wn.Serial(wn.ConvLocal(8, 3, W_std=1.3, b_std=0.2), wn.Relu(), wn.Flatten(), wn.Dense(1)).kernel(x)
    b = wn.Serial(wn.Conv(8, 3, W_std=1.3, b_std=0.2), wn.Relu(), wn.Flatten(), wn.Dense(1)).kernel(x)
    assert torch.allclose(a.nngp, b.nngp, rtol=1e-13) and torch.allclose(a.ntk, b.ntk, rtol=1e-13)


def test_the_twin_keeps_its_input_size_and_valid_padding_needs_room():
    model = wn.ConvLocal(4, 3).module((2, 5), seed=0, dtype=D)
    model(torch.randn(3, 2, 5, dtype=D))
    with pytest.raises(ShapeError, match=r"ConvLocal twin: expected inputs of shape \(N, 2, 5\)"):
        model(torch.randn(3, 2, 6, dtype=D))
    with pytest.raises(ShapeError, match=r"ConvLocal: with padding='valid' each spatial size must be at least the "
                                         r"\(dilated\) window 4 \(got 3\)"):
        wn.Serial(wn.ConvLocal(4, 4, padding="valid"), wn.Flatten(), wn.Dense(1)).kernel(torch.randn(2, 1, 3))


@pytest.mark.nt
@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize("k, s, spatial", [(3, 1, (5,)), (3, 2, (6,)), (2, 2, (4, 5)), (3, 1, (5, 4))])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_matches_neural_tangents_in_every_geometry(padding, k, s, spatial, parameterization):
    # (Erf: with ReLU, Neural Tangents' arccos at correlation 1 puts ~1e-9 on the NTK's diagonal)
    net = wn.Serial(wn.ConvLocal(8, k, stride=s, padding=padding, W_std=1.3, b_std=0.2,
                                 parameterization=parameterization), wn.Erf(),
                    wn.Conv(8, 2, padding=padding, W_std=1.1, b_std=0.1, parameterization=parameterization),
                    wn.Flatten(), wn.Dense(1, parameterization=parameterization))
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn((3, 2) + spatial, generator=g, dtype=D)
    x2 = torch.randn((2, 2) + spatial, generator=g, dtype=D)
    check_neural_tangents(net, x1, x2)
