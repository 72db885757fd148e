"""The gradient's fraction in the top Hessian subspace during training
(widenet.theory._subspace; Gur-Ari et al. 2018): it concentrates there during SGD, and equals
the dense projection."""

import math

import pytest
import torch
import torch.nn.functional as F

import widenet as wn
from theory._helpers import _flat_eigh, _hessian_setup
from widenet import theory

D = torch.float64


def test_gradient_concentrates_in_the_top_hessian_subspace_during_sgd():
    from sklearn.datasets import load_digits

    xs, ys = load_digits(return_X_y=True)
    x, y = torch.tensor(xs[:600] / 16.0, dtype=D), torch.tensor(ys[:600])
    net = wn.Serial(wn.Dense(32, W_std=math.sqrt(2), b_std=0.0, parameterization="standard"), wn.Relu(),
                    wn.Dense(32, W_std=math.sqrt(2), b_std=0.0, parameterization="standard"), wn.Relu(),
                    wn.Dense(10, parameterization="standard"))
    run = theory.hessian_subspace(net.module(64, seed=0, dtype=D), F.cross_entropy, x, y, steps=300,
                                  learning_rate=0.1, batch_size=64, record=50)
    assert run.k == 10 and run.parameters == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert list(run.steps) == [0, 50, 100, 150, 200, 250, 300]
    assert run.loss[-1] < 0.2 * run.loss[0]
    late = run.gradient_fraction[2:]
    assert float(late.min()) > 0.5 > 100 * run.random_fraction  # most of the gradient in 10 of 3466 directions
    torch.testing.assert_close(run.overlap.diagonal(), torch.ones(7, dtype=D), rtol=0, atol=1e-8)
    assert float(run.overlap[4, 6]) > 0.6  # the subspace changes slowly late in training
    assert torch.all(run.eigenvalues[:, :-1] >= run.eigenvalues[:, 1:])


def test_hessian_subspace_fraction_equals_the_dense_projection():
    model, x, y, hessian = _hessian_setup()
    w, v = _flat_eigh(hessian)
    params = dict(model.named_parameters())
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))])
    expected = float(((v[:, :4].T @ g) ** 2).sum() / (g @ g))
    run = theory.hessian_subspace(model, F.cross_entropy, x, y, k=4, steps=10, record=[0, 5, 10],
                                  optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    assert list(run.steps) == [0, 5, 10]
    assert float(run.gradient_fraction[0]) == pytest.approx(expected, rel=1e-8)
    torch.testing.assert_close(run.eigenvalues[0], w[:4], rtol=1e-8, atol=1e-12)
    assert float(run.loss[-1]) < float(run.loss[0])
    # The model itself was not trained.
    assert torch.equal(dict(model.named_parameters())["0.weight"], params["0.weight"])
