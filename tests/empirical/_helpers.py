"""Helpers shared by the tests of widenet.empirical (and by tests/theory): the per-example,
per-output torch.autograd.grad reference, a zoo of models, and a model with an op that has no
forward-mode derivative."""

import torch
from torch import nn


def _reference(model, x1, x2, names=None):
    """(N1, N2, O, O): one autograd.grad call per input and output unit."""
    model.eval()
    params = [p for n, p in model.named_parameters() if names is None or any(n.startswith(k) for k in names)]

    def jac(x):
        rows = []
        for i in range(len(x)):
            out = model(x[i:i + 1]).reshape(-1)
            rows.append(torch.stack([
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[c], params, retain_graph=True)])
                for c in range(out.numel())
            ]))
        return torch.stack(rows)

    return torch.einsum("aip,bjp->abij", jac(x1), jac(x2))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(12, 12), nn.GELU(), nn.Linear(12, 12))
        self.out = nn.Linear(12, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.block(h))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # (B, L, 3)
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


def _models():
    torch.manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)), (6,)),
        "cnn-pool": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3),
                                   nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)), (1, 6, 6)),
        "residual": (Residual(), (6,)),
        "batchnorm-layernorm-dropout": (nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Dropout(0.5),
                                                      nn.Linear(10, 10), nn.LayerNorm(10), nn.Linear(10, 2)), (6,)),
        "attention": (Attention(), (5, 3)),
    }


class _Cube(torch.autograd.Function):
    """x^3 with a backward (so double backward works) but no forward-mode rule (no jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad


class _BrokenCube(_Cube):
    """Like _Cube, but its backward cannot itself be differentiated."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _Unsupported.apply(3 * x * x * grad)


class _Unsupported(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("the second derivative broke")


class _NoForwardMode(nn.Module):
    def __init__(self, broken=False):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)
        self.cube = _BrokenCube if broken else _Cube

    def forward(self, x):
        return self.b(self.cube.apply(self.a(x)))
