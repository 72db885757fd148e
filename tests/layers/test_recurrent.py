"""Recurrent networks (src/widenet/layers/recurrent.py): the layer contract for both readouts,
Monte Carlo of the RNN twin over sequence lengths 1-20 and masked sequences, one step equals
Dense + nonlinearity, padded sequences equal unpadded ones, bad input."""

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import monte_carlo, rel_frobenius
from widenet.errors import ParameterError, ShapeError

D = torch.float64


class TestRecurrentLast(KernelContract):
    params = {"W_std": 0.9, "U_std": 1.1, "b_std": 0.2}
    float_params = ("W_std", "U_std", "b_std")
    input_shape = (2, 5)
    twin = "RecurrentModule"
    mc_width = 512
    mc_samples = 40
    parameterizations = ("ntk", "standard")
    bad = (
        (lambda: wn.Recurrent(0), ParameterError, r"Recurrent: hidden_features must be an integer >= 1 \(got 0\)"),
        (lambda: wn.Recurrent(8, W_std=-1.0), ParameterError, r"Recurrent: W_std must be a finite float >= 0"),
        (lambda: wn.Recurrent(8, readout="first"), ParameterError, r"Recurrent: readout must be one of"),
        (lambda: wn.Recurrent(8, nonlinearity=wn.Dense(3)), ParameterError,
         r"Recurrent: nonlinearity must be an elementwise widenet layer"),
        (lambda: wn.Recurrent(8, parameterization="mup"), ParameterError, r"Recurrent: parameterization must be one of"),
    )
    readout = "last"

    def network(self, width, parameterization="ntk", W_std=0.9, U_std=1.1, b_std=0.2):
        rnn = wn.Recurrent(width, W_std=W_std, U_std=U_std, b_std=b_std, nonlinearity=wn.Erf(),
                           readout=self.readout, parameterization=parameterization)
        head = [wn.GlobalAvgPool()] if self.readout == "all" else []
        return wn.Serial(wn.Dense(width, 1.2, 0.1, parameterization), wn.Relu(), rnn, *head,
                         wn.Dense(min(width, 256), 1.0, 0.1, parameterization))


class TestRecurrentAll(TestRecurrentLast):
    readout = "all"


def _sequences(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, length, generator=g, dtype=D)


@pytest.mark.parametrize("length", [1, 7, 20])
@pytest.mark.parametrize("phi", ["relu", "tanh"])
def test_kernels_match_monte_carlo_of_the_rnn(length, phi):
    nonlinearity = wn.Relu() if phi == "relu" else wn.Tanh()
    x1, x2 = _sequences(3, length, 1), _sequences(2, length, 2)
    # A ReLU RNN's finite-width bias grows with the length (at L = 20, +5% at width 256, +3.6%
    # at 512, -0.6% at 2048): there, the NNGP alone at width 2048 (forward passes only).
    wide = phi == "relu" and length == 20
    net = wn.Serial(wn.Recurrent(2048 if wide else 512, W_std=1.0, U_std=1.2, b_std=0.2, nonlinearity=nonlinearity),
                    wn.Dense(256, 1.0, 0.1))
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=24 if length < 20 else 48, ntk=not wide)
    assert rel_frobenius(nngp, exact.nngp) < 0.05
    assert wide or rel_frobenius(ntk, exact.ntk) < 0.05


@pytest.mark.parametrize("readout", ["last", "all"])
def test_masked_sequences_match_monte_carlo(readout):
    x = _sequences(4, 9, 3)
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[1, 6:] = True  # length 6, padded at the end
    mask[2, :3] = True  # length 6, padded at the start
    mask[3, ::2] = True  # every other step padded
    head = [wn.GlobalAvgPool()] if readout == "all" else []
    net = wn.Serial(wn.Recurrent(512, W_std=1.0, U_std=1.2, b_std=0.2, nonlinearity=wn.Erf(), readout=readout),
                    *head, wn.Dense(256, 1.0, 0.1))
    exact = net.kernel(x, mask1=mask)
    nngp, ntk = monte_carlo(net, x, x, n_samples=32, mask1=mask, mask2=mask)
    assert rel_frobenius(nngp, exact.nngp) < 0.05 and rel_frobenius(ntk, exact.ntk) < 0.05


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_one_step_is_a_dense_layer_and_its_nonlinearity(parameterization):
    x = torch.randn(5, 3, 1, dtype=D, generator=torch.Generator().manual_seed(4))
    rnn = wn.Serial(wn.Recurrent(8, W_std=1.7, U_std=1.3, b_std=0.4, nonlinearity=wn.Tanh(),
                                 parameterization=parameterization), wn.Dense(1, 1.1, 0.2, parameterization))
    mlp = wn.Serial(wn.Dense(8, 1.3, 0.4, parameterization), wn.Tanh(), wn.Dense(1, 1.1, 0.2, parameterization))
    a, b = rnn.kernel(x), mlp.kernel(x[:, :, 0])
    assert torch.allclose(a.nngp, b.nngp, rtol=1e-13, atol=0) and torch.allclose(a.ntk, b.ntk, rtol=1e-13, atol=0)


@pytest.mark.parametrize("readout", ["last", "all"])
def test_a_padded_sequence_has_exactly_the_kernel_of_the_unpadded_one(readout):
    g = torch.Generator().manual_seed(5)
    rnn = wn.Recurrent(16, W_std=1.1, U_std=0.9, b_std=0.3, nonlinearity=wn.Gelu(), readout=readout)
    net = wn.Serial(wn.Dense(8, 1.0, 0.1), wn.Erf(), rnn, *([wn.GlobalAvgPool()] if readout == "all" else []),
                    wn.Dense(1))
    seqs = [torch.randn(2, n, generator=g, dtype=D) for n in (4, 7, 5)]
    total = 9
    x = torch.randn(3, 2, total, generator=g, dtype=D) * 30  # garbage at the padded steps
    mask = torch.ones(3, total, dtype=torch.bool)
    places = [torch.arange(0, 4), torch.arange(2, 9), torch.tensor([0, 2, 4, 6, 8])]  # end, start, interleaved
    for i, (s, p) in enumerate(zip(seqs, places)):
        x[i][:, p] = s
        mask[i, p] = False
    padded = net.kernel(x, mask1=mask)
    for i in range(3):
        plain = net.kernel(seqs[i][None])
        for name in ("nngp", "ntk"):
            assert torch.allclose(getattr(padded, name)[i, i], getattr(plain, name)[0, 0], rtol=1e-12, atol=0), (name, i)
    # Pairs of different lengths: both padded at the end to a common length instead.
    at_end = torch.stack([torch.nn.functional.pad(s, (0, 7 - s.shape[1])) for s in seqs])
    end_mask = torch.stack([torch.arange(7) >= s.shape[1] for s in seqs])
    other = net.kernel(at_end, mask1=end_mask)
    for name in ("nngp", "ntk"):
        assert torch.allclose(getattr(padded, name), getattr(other, name), rtol=1e-12, atol=0), name


def test_sequences_of_other_shapes_are_refused():
    rnn = wn.Serial(wn.Recurrent(8), wn.Dense(1))
    with pytest.raises(ShapeError, match=r"Recurrent: expects sequences \(N, C, L\), one time axis"):
        rnn.kernel(torch.randn(3, 2, 4, 4, dtype=D))
    with pytest.raises(ShapeError, match=r"Recurrent: expects sequences \(N, C, L\), one time axis"):
        rnn.kernel(torch.randn(3, 2, dtype=D))
    with pytest.raises(ShapeError, match=r"RecurrentModule: expected sequences \(N, C, L\) \(got \(3, 2\)\)"):
        rnn.module(seed=0)(torch.randn(3, 2))
