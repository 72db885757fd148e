"""Indexing (src/widenet/layers/index.py)."""

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract, check_neural_tangents
from oracles import monte_carlo, rel_frobenius
from widenet.errors import ParameterError, ShapeError

D = torch.float64


class TestIndex(KernelContract):
    params = {"idx": wn.Slice[:, :, 1:, ::-2]}
    input_shape = (2, 5, 4)
    twin = "IndexModule"
    bad = (
        (lambda: wn.Index(wn.Slice[..., 1, ...]), ParameterError, r"Index: idx may hold one Ellipsis at most"),
        (lambda: wn.Index(wn.Slice[:, "a"]), ParameterError, r"Index: idx must hold slices, ints and at most one Ellipsis"),
        (lambda: wn.Index(wn.Slice[:, ::0]), ParameterError, r"Index: a slice step must not be zero"),
    )

    def network(self, width, parameterization="ntk", idx=wn.Slice[:, :, 1:, ::-2]):
        return wn.Serial(wn.Conv(width, 3, W_std=1.3, b_std=0.2, parameterization=parameterization), wn.Relu(),
                         wn.Index(idx), wn.Conv(width, 2, parameterization=parameterization), wn.Relu(),
                         wn.GlobalAvgPool(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))


@pytest.mark.parametrize("idx", [wn.Slice[..., 2], wn.Slice[:, :, 3, ::-1], wn.Slice[:, :40, -2:, 1:3],
                                 wn.Slice[:, :, 1, 2]], ids=["drop-last", "drop-first-reverse", "channels-crop", "all"])
def test_kernels_match_monte_carlo_of_the_twin(idx):
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(3, 2, 5, 4, generator=g, dtype=D), torch.randn(2, 2, 5, 4, generator=g, dtype=D)
    net = wn.Serial(wn.Conv(256, 3, W_std=1.3, b_std=0.3, parameterization="standard"), wn.Erf(), wn.Index(idx),
                    wn.Flatten(), wn.Dense(256, 1.1, 0.1, parameterization="standard"))
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=192)
    assert rel_frobenius(nngp, exact.nngp) < 0.05 and rel_frobenius(ntk, exact.ntk) < 0.05


def test_a_convolution_after_dropping_an_axis_matches_monte_carlo():
    g = torch.Generator().manual_seed(9)
    x1, x2 = torch.randn(3, 2, 5, 4, generator=g, dtype=D), torch.randn(2, 2, 5, 4, generator=g, dtype=D)
    net = wn.Serial(wn.Index(wn.Slice[:, :, 3, ::-1]), wn.Conv(256, 2, W_std=1.3, b_std=0.3), wn.Erf(),
                    wn.Conv(256, 2, W_std=1.1), wn.Erf(), wn.GlobalAvgPool(), wn.Dense(256, 1.1, 0.1))
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=96)
    assert rel_frobenius(nngp, exact.nngp) < 0.05 and rel_frobenius(ntk, exact.ntk) < 0.05


def test_selection_is_the_selected_kernel_entries():
    # without nonlinearity after it, Index then Flatten averages the kept positions' diagonal
    x = torch.randn(4, 2, 6, dtype=D, generator=torch.Generator().manual_seed(6))
    a = wn.Serial(wn.Dense(1), wn.Index(wn.Slice[:, :, ::-2]), wn.Flatten(), wn.Dense(1)).kernel(x)
    y = x[:, :, [5, 3, 1]]
    want = torch.einsum("ncs,mcs->nm", y, y) / (2 * 3)
    assert torch.allclose(a.nngp, want, rtol=1e-13)


def test_bad_indices_are_refused_with_the_sizes():
    x = torch.randn(2, 3, 5, dtype=D)
    with pytest.raises(ParameterError, match=r"Index: the batch axis \(axis 0\) must stay whole"):
        wn.Serial(wn.Conv(4, 3), wn.Index(wn.Slice[:1]), wn.Flatten(), wn.Dense(1)).kernel(x)
    with pytest.raises(ParameterError, match=r"Index: an int on the channel axis \(axis 1\) would drop it"):
        wn.Serial(wn.Conv(4, 3), wn.Index(wn.Slice[:, 0]), wn.Flatten(), wn.Dense(1)).kernel(x)
    with pytest.raises(ShapeError, match=r"Index: index 7 is out of range for spatial axis 0 of size 5"):
        wn.Serial(wn.Conv(4, 3), wn.Index(wn.Slice[:, :, 7]), wn.Dense(1)).kernel(x)
    with pytest.raises(ShapeError, match=r"Index: idx .* indexes 4 axes but the input has 3"):
        wn.Serial(wn.Conv(4, 3), wn.Index(wn.Slice[:, :, 1, 2]), wn.Dense(1)).kernel(x)
    with pytest.raises(ShapeError, match=r"Index: the slice slice\(3, 1, None\) keeps no position"):
        wn.Serial(wn.Conv(4, 3), wn.Index(wn.Slice[:, :, 3:1]), wn.Flatten(), wn.Dense(1)).kernel(x)


@pytest.mark.nt
@pytest.mark.parametrize("idx", [wn.Slice[..., 2], wn.Slice[:, :, 3, ::-1], wn.Slice[:, :, -2:, 1:3], wn.Slice[:, :, 1::2]])
@pytest.mark.parametrize("where", ["first", "after-conv"])
def test_matches_neural_tangents(idx, where):
    from nt import nt_kernel

    convs = [wn.Conv(8, 2, W_std=1.3, b_std=0.2), wn.Erf()]
    layers = [wn.Index(idx)] + convs if where == "first" else convs + [wn.Index(idx)]
    net = wn.Serial(*layers, wn.Flatten(), wn.Dense(1))
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(3, 2, 5, 4, generator=g, dtype=D), torch.randn(2, 2, 5, 4, generator=g, dtype=D)
    if where == "first" and any(isinstance(i, int) for i in idx):
        # Neural Tangents refuses a Conv after an Index that drops an axis (its channel_axis
        # bookkeeping); widenet's kernel there is checked against Monte Carlo (drop-then-conv)
        with pytest.raises(RuntimeError, match=r"requires `channel_axis == 0`, but input kernel has `channel_axis == 2`"):
            nt_kernel(net, x1, x2)
        return
    check_neural_tangents(net, x1, x2)
