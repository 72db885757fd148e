"""Products of tiles with per-input matrices: ``g1 @ k @ g2^T`` over position pairs.

Attention weighs a kernel over position pairs by each input's own weights on both sides:
for every pair ``(i, j)`` of a tile, ``g1[i] @ k[i, j] @ g2[j]^T``. These are the
engine's ways to compute that fast, and reproducibly (exact products, both associations).
"""

from __future__ import annotations

import torch

from . import exact, scratch

__all__ = ["sandwich", "pair_sandwich"]


def sandwich(g1: torch.Tensor, k: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """``g1 @ k @ g2^T`` over the last two axes (broadcasting the leading ones). In
    reproducible mode, the mean of both ways of associating it, with exact products: the
    transposed operands then give the transposed result, bit for bit."""
    if exact.active():
        g2t = g2.transpose(-1, -2)
        one = exact.matmul(exact.matmul(g1, k), g2t)
        return one.add_(exact.matmul(g1, exact.matmul(k, g2t))).mul_(0.5)
    return torch.matmul(torch.matmul(g1, k), g2.transpose(-1, -2))


def pair_sandwich(g1: torch.Tensor, k: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """``g1[i] @ k[i, j] @ g2[j]^T`` for every pair of a ``(B, C, n, n)`` tile, contiguous.

    As a batch of B * C products of n x n matrices this runs far from the matrix-multiply
    peak for sequence lengths of tens, and broadcasting copies ``g1`` and ``g2`` C and B
    times. Instead each row input's weights multiply all its columns in one (n x n) @
    (n x C n) product, and each column input's weights all its rows in one (B n x n) @
    (n x n) product."""
    if exact.active():
        return _exact_pair_sandwich(g1, k, g2)
    b, c, n, _ = k.shape
    by_row = scratch.clone(k.transpose(1, 2)).view(b, n, c * n)  # (b, t, c, u)
    left = scratch.call(torch.bmm, g1, by_row, shape=(b, n, c * n))  # (b, s, c, u)
    by_col = scratch.clone(left.view(b, n, c, n).permute(2, 0, 1, 3)).view(c, b * n, n)
    right = scratch.call(torch.bmm, by_col, g2.transpose(1, 2), shape=(c, b * n, n))
    return scratch.clone(right.view(c, b, n, n).transpose(0, 1))


def _exact_pair_sandwich(g1: torch.Tensor, k: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """``pair_sandwich`` in reproducible mode: the mean of ``(g1 k) g2^T`` and
    ``g1 (k g2^T)``, with exact-then-rounded products laid out as in ``pair_sandwich``
    (a product's rounding depends only on its rows and columns, not on the batch around it)."""
    b, c, n, _ = k.shape
    mm = exact.matmul
    g2t = g2.transpose(1, 2)
    left = mm(g1, k.transpose(1, 2).reshape(b, n, c * n)).view(b, n, c, n)  # (b, s, c, u): g1 k
    one = mm(left.permute(2, 0, 1, 3).reshape(c, b * n, n), g2t)  # (c, b s, v): (g1 k) g2^T
    right = mm(k.transpose(0, 1).reshape(c, b * n, n), g2t).view(c, b, n, n)  # (c, b, t, v): k g2^T
    two = mm(g1, right.permute(1, 2, 0, 3).reshape(b, n, c * n)).view(b, n, c, n)  # g1 (k g2^T)
    out = one.view(c, b, n, n).transpose(0, 1).add(two.transpose(1, 2))
    return out.mul_(0.5).contiguous()
