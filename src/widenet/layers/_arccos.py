"""Angles between inputs, and Cho & Saul's arc-cosine functions: the pieces shared by the
ReLU family, Sign and the rectified monomials."""

from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache
from math import comb

import torch

from .._engine import Tile, exact, safe_sqrt, scratch

__all__ = ["angles", "sin_root", "root_of", "atan2", "exact_atan2", "arccos_terms", "double_factorial"]

PI = math.pi


def angles(w: Tile, root: torch.Tensor) -> torch.Tensor:
    """``theta = atan2(sqrt(q1 q2 - K^2), K)``, with pi/2 where an input has zero variance."""
    theta = exact.call(torch.atan2, root, w.nngp)
    zero = w.zero_variance_mask()
    if zero is not None:
        theta.masked_fill_(zero, PI / 2)
    return theta


def sin_root(w: Tile) -> torch.Tensor:
    """``sqrt(max(q1 q2 - K^2, 0))``: (q1 q2)^{1/2} sin(theta) without dividing."""
    return root_of(w.nngp, *w.outer(w.var1, w.var2))


def root_of(nngp: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(q1 q2 - K^2, 0))`` for broadcast operands."""
    # Two separately rounded products, not a fused multiply-add: for an input against itself
    # (K == q1 == q2 bitwise) the difference is then exactly zero, and so is the angle.
    root = scratch.call(torch.mul, q1, q2)
    return safe_sqrt(root.sub_(scratch.call(torch.mul, nngp, nngp)).clamp_(min=0))


def atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return scratch.call(torch.atan2, y, x)


def exact_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``atan2`` on its vectorized path only (reproducible mode)."""
    return exact.elementwise(torch.atan2, y, x)


@lru_cache(maxsize=None)
def arccos_terms(n: int) -> tuple[tuple[int, int, int, int], ...]:
    """Cho & Saul's arc-cosine function ``J_n(theta)`` as a homogeneous polynomial.

    ``J_n = (-1)^n sin^{2n+1}(theta) (1/sin d/dtheta)^n ((pi - theta)/sin theta)``
    (Cho & Saul 2009, eq. 4). Returns terms ``(coef, i, j, k)`` meaning
    ``coef * cos^i * sin^j * (pi - theta)^k`` with ``i + j = n``, so that
    ``(q1 q2)^{n/2} J_n = sum coef * K^i * S^j * (pi - theta)^k`` with ``S = sqrt(q1 q2 - K^2)``.
    """
    terms = {(0, -1, 1): 1}
    for _ in range(n):
        new = defaultdict(int)
        for (i, j, k), a in terms.items():
            if i:
                new[(i - 1, j, k)] -= i * a
            if j:
                new[(i + 1, j - 2, k)] += j * a
            if k:
                new[(i, j - 1, k - 1)] -= k * a
        terms = {key: v for key, v in new.items() if v}
    sign = -1 if n % 2 else 1
    homogeneous = defaultdict(int)
    for (i, j, k), a in terms.items():
        j += 2 * n + 1
        m = (n - i - j) // 2  # cos^2 + sin^2 = 1 lifts every term to degree n
        for t in range(m + 1):
            homogeneous[(i + 2 * t, j + 2 * (m - t), k)] += sign * a * comb(m, t)
    return tuple((a, i, j, k) for (i, j, k), a in sorted(homogeneous.items()) if a)


def double_factorial(n: int) -> int:
    out = 1
    while n > 1:
        out *= n
        n -= 2
    return out
