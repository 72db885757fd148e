"""Helpers shared by the tests of widenet.predict: comparisons and the dense references they
all use."""

import torch

D = torch.float64


def close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
    assert err <= tol, err


def _reg(k, diag_reg):
    return k + diag_reg * k.diagonal().mean() * torch.eye(len(k), dtype=k.dtype)


def _mse(f, y):
    return ((f - y) ** 2).sum() / (2 * y.numel())


def _dense(k):
    """(N1, N2, O, O) -> (N1 O, N2 O) by explicit loops: row i * O + a, column j * O + b."""
    n1, n2, o, _ = k.shape
    out = torch.empty(n1 * o, n2 * o, dtype=k.dtype)
    for i in range(n1):
        for j in range(n2):
            for a in range(o):
                for b in range(o):
                    out[i * o + a, j * o + b] = k[i, j, a, b]
    return out
