"""Helpers shared by the tests of widenet.theory: seeded generators, dense eigendecompositions
in descending order, a small classifier with its dense cross-entropy Hessian, and an Erf
architecture of any width."""

import torch
import torch.nn.functional as F

import widenet as wn

D = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _flat_eigh(matrix):
    w, v = torch.linalg.eigh(matrix)
    return w.flip(0), v.flip(1)


def _hessian_setup():
    net = wn.Serial(wn.Dense(12, W_std=1.4, b_std=0.2), wn.Tanh(), wn.Dense(4, W_std=1.0, b_std=0.2))
    model = net.module(6, seed=3, dtype=D)
    x = torch.randn(30, 6, dtype=D, generator=_gen(3))
    y = torch.randint(0, 4, (30,), generator=_gen(4))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(vector):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = vector[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    return model, x, y, torch.func.hessian(loss_of)(flat)


def _arch(width):
    return wn.Serial(wn.Dense(width, W_std=1.5, b_std=0.1), wn.Erf(), wn.Dense(1, W_std=1.5, b_std=0.1))
