"""Dropout (src/widenet/layers/dropout.py)."""

import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import rel_frobenius
from widenet.errors import ParameterError

TOL = 0.05


class TestDropout(KernelContract):
    params = {"rate": 0.3}
    float_params = ("rate",)
    twin = "Dropout(p=0.3"
    mc_width = 512
    mc_samples = 200
    bad = (
        (lambda: wn.Dropout(1.0), ParameterError, r"Dropout: rate must be a finite float >= 0 and < 1 \(got 1.0\)"),
        (lambda: wn.Dropout(0.2, mode="test"), ParameterError, r"Dropout: mode must be one of 'train', 'eval' \(got 'test'\)"),
    )

    def network(self, width, parameterization="ntk", rate=0.3):
        return wn.Serial(wn.Dense(width, 1.3, 0.2, parameterization), wn.Relu(), wn.Dropout(rate),
                         wn.Dense(min(width, 256), 1.1, 0.1, parameterization))

    def test_twin_shows_in_the_networks_repr_and_runs(self):
        # The twin draws fresh masks in each forward pass: compare networks in eval mode.
        model = self.net().module(self.input_shape, seed=0, dtype=torch.float64)
        assert self.twin in repr(model)
        x = self.inputs(3)
        twin = self.net().module(self.input_shape, seed=0, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(model.eval()(x), twin.eval()(x))


def _images(shape, n1=3, n2=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n1,) + shape, generator=g, dtype=dtype),
            torch.randn((n2,) + shape, generator=g, dtype=dtype))


def test_dropout_matches_monte_carlo_with_its_documented_semantics():
    # One forward pass of x draws one mask per example: an example shares its mask with
    # itself (the diagonal), and distinct examples are independent.
    x, _ = _images((2, 5), n1=4, seed=2)
    net = wn.Serial(wn.Conv(512, 3, W_std=1.3, b_std=0.2), wn.Relu(), wn.Dropout(0.3),
                    wn.Conv(512, 3), wn.Relu(), wn.Dropout(0.2), wn.GlobalAvgPool(), wn.Dense(256))
    exact = net.kernel(x)
    total = torch.zeros(4, 4, dtype=x.dtype)
    n = 200
    for s in range(n):
        model = net.module(tuple(x.shape[1:]), seed=s, dtype=x.dtype)
        torch.manual_seed(10_000 + s)
        with torch.no_grad():
            f = model(x)
        total += f @ f.T / f.shape[1]
    assert rel_frobenius(total / n, exact.nngp) < TOL
    # The diagonal is larger than without dropout, the off-diagonal the same in expectation.
    plain = wn.Serial(*[layer for layer in net.layers if not isinstance(layer, wn.Dropout)]).kernel(x)
    assert bool((exact.nngp.diagonal() > plain.nngp.diagonal()).all())
    assert wn.Dropout(0.3, mode="eval").apply(plain).nngp.equal(plain.nngp)
