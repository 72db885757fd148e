"""Transposed convolutions (src/widenet/layers/conv_transpose.py)."""

import itertools

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract, check_neural_tangents
from oracles import monte_carlo, rel_frobenius
from widenet.errors import ParameterError, ShapeError
from widenet.layers.conv_transpose import transpose_geometry

D = torch.float64


class TestConvTranspose(KernelContract):
    params = {"W_std": 1.4, "b_std": 0.2}
    float_params = ("W_std", "b_std")
    input_shape = (2, 5, 4)
    twin = "ConvTransposeModule"
    parameterizations = ("ntk", "standard")
    bad = (
        (lambda: wn.ConvTranspose(0, 3), ParameterError,
         r"ConvTranspose: out_channels must be an integer >= 1 \(got 0\)"),
        (lambda: wn.ConvTranspose(4, 3, stride=0), ParameterError,
         r"ConvTranspose: stride must be an integer >= 1 \(got 0\)"),
        (lambda: wn.ConvTranspose(4, 3, padding="full"), ParameterError,
         r"ConvTranspose: padding must be one of 'same', 'valid', 'circular' \(got 'full'\)"),
        (lambda: wn.ConvTranspose(4, 3, b_std=-0.1), ParameterError,
         r"ConvTranspose: b_std must be a finite float >= 0 or None \(got -0.1\)"),
    )

    def network(self, width, parameterization="ntk", W_std=1.4, b_std=0.2):
        return wn.Serial(wn.ConvTranspose(width, 3, stride=2, W_std=W_std, b_std=b_std,
                                          parameterization=parameterization),
                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))


def test_geometry_matches_torch_conv_transpose_sizes_and_lax_paddings():
    # "valid" is torch's own ConvTranspose output size plus the zeros lax appends when the
    # stride exceeds the kernel; "same" is size * stride
    for n, k, s in itertools.product((1, 4, 5), (1, 2, 3, 4), (1, 2, 3)):
        _, _, length, out = transpose_geometry(n, k, s, "valid")
        assert out == length == (n - 1) * s + k + max(s - k, 0)
        assert transpose_geometry(n, k, s, "same")[3] == n * s
        assert transpose_geometry(n, k, s, "circular")[3] == n * s


CASES = [  # (padding, kernel_size, stride, input spatial shape)
    ("same", 3, 2, (5,)), ("valid", 2, 3, (4,)), ("circular", 3, 2, (5,)), ("valid", 4, 1, (6,)),
    ("same", 4, 2, (7,)), ("circular", (2, 3), (1, 2), (3, 4)), ("valid", 2, 2, (3, 2)),
]


@pytest.mark.parametrize("padding, k, s, spatial", CASES, ids=[f"{c[0]}-k{c[1]}-s{c[2]}-{len(c[3])}d" for c in CASES])
def test_kernels_match_monte_carlo_of_the_twin_in_every_geometry(padding, k, s, spatial):
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn((3, 2) + spatial, generator=g, dtype=D)
    x2 = torch.randn((2, 2) + spatial, generator=g, dtype=D)
    net = wn.Serial(wn.ConvTranspose(256, k, stride=s, padding=padding, W_std=1.3, b_std=0.2), wn.Erf(),
                    wn.Flatten(), wn.Dense(256, 1.1, 0.1))
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=96)
    assert rel_frobenius(nngp, exact.nngp) < 0.05 and rel_frobenius(ntk, exact.ntk) < 0.05
    # the twin's output has the kernel's spatial shape
    model = net.layers[0].module((2,) + spatial, seed=0, dtype=D)
    assert model(x1).shape[2:] == tuple(transpose_geometry(n, kk, ss, padding)[3] for n, kk, ss in zip(
        spatial, k if isinstance(k, tuple) else (k,) * len(spatial), s if isinstance(s, tuple) else (s,) * len(spatial)))


def test_stride_one_same_equals_conv_in_distribution():
    # a stride-1 'same' transposed convolution with an odd kernel is a convolution with the
    # filter reversed: the same kernels (iid weights)
    x = torch.randn(4, 2, 6, 5, dtype=D, generator=torch.Generator().manual_seed(4))
    for padding in ("same", "circular"):
        a = wn.Serial(wn.ConvTranspose(8, 3, padding=padding, W_std=1.2, b_std=0.3), wn.Relu(), wn.Flatten(),
                      wn.Dense(1)).kernel(x)
        b = wn.Serial(wn.Conv(8, 3, padding=padding, W_std=1.2, b_std=0.3), wn.Relu(), wn.Flatten(),
                      wn.Dense(1)).kernel(x)
        assert torch.allclose(a.nngp, b.nngp, rtol=1e-13) and torch.allclose(a.ntk, b.ntk, rtol=1e-13)


def test_needs_spatial_inputs_and_no_padding_masks():
    with pytest.raises(ShapeError, match=r"ConvTranspose: needs inputs with spatial axes"):
        wn.Serial(wn.Dense(4), wn.ConvTranspose(4, 3)).kernel(torch.randn(3, 5))
    x = torch.randn(2, 3, 6, dtype=D)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 4:] = True
    with pytest.raises(ShapeError, match=r"ConvTranspose: padding masks are supported only .* moves positions"):
        wn.Serial(wn.ConvTranspose(4, 3), wn.Flatten(), wn.Dense(1)).kernel(x, mask1=mask)


@pytest.mark.nt
@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize("k, s, spatial", [(3, 1, (5,)), (3, 2, (5,)), (2, 2, (4, 5)), (3, 2, (5, 3)), (4, 3, (3, 4))])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_matches_neural_tangents_in_every_geometry(padding, k, s, spatial, parameterization):
    # (Erf: with ReLU, Neural Tangents' arccos at correlation 1 puts ~1e-9 on the NTK's diagonal)
    net = wn.Serial(wn.ConvTranspose(8, k, stride=s, padding=padding, W_std=1.3, b_std=0.2,
                                     parameterization=parameterization), wn.Erf(),
                    wn.ConvTranspose(8, 2, stride=1, padding=padding, W_std=1.1, b_std=0.1,
                                     parameterization=parameterization),
                    wn.Flatten(), wn.Dense(1, parameterization=parameterization))
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn((3, 2) + spatial, generator=g, dtype=D)
    x2 = torch.randn((2, 2) + spatial, generator=g, dtype=D)
    check_neural_tangents(net, x1, x2)
